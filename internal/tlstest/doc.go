// Package tlstest gives tests a RabbitMQ node that speaks only TLS: a test
// PKI written with crypto/x509 ([WriteCerts]: a CA, a server certificate for
// localhost and 127.0.0.1, a client certificate, and a client certificate
// from a CA nobody trusts), and a node of its own next to the machine's
// broker ([StartNode]: own node name, ports, data directory, cookie and
// configuration, an amqps listener on 127.0.0.1 with verify_peer and, at
// will, fail_if_no_peer_cert). The machine's main node and its
// configuration are never touched.
//
// Booting a node takes about 5 seconds and stopping it 3: start one per
// test package, in TestMain, and stop it there. The node halts by itself
// after NodeConfig.MaxLifetime in case the test binary dies first.
package tlstest
