package amqp

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// openConn dials url and opens an AMQP connection on it with
// amqp091.Open, reading through a frameConn (see frames.go), which is why
// it does what amqp091.DialConfig does itself: TLS for amqps:// (the filter
// must read the plaintext), the SASL mechanisms, vhost, heartbeat and
// channel_max of the URL, amqp091's default locale and frame size.
func openConn(ctx context.Context, url string, cfg Config, props amqp091.Table, dial func(network, addr string) (net.Conn, error), onRewrite func(channel uint16, reason string)) (*amqp091.Connection, error) {
	uri, err := amqp091.ParseURI(url)
	if err != nil {
		return nil, errBadURL
	}
	config := amqp091.Config{
		Heartbeat:  cfg.heartbeat(),
		Properties: props,
		Vhost:      uri.Vhost,
		ChannelMax: uri.ChannelMax,
		FrameSize:  131072, // amqp091's default
		Locale:     "en_US",
	}
	if hb, ok := uriHeartbeat(url); ok {
		config.Heartbeat = hb
	}
	for _, m := range uri.AuthMechanism {
		switch strings.ToUpper(m) {
		case "PLAIN":
			config.SASL = append(config.SASL, uri.PlainAuth())
		case "AMQPLAIN":
			config.SASL = append(config.SASL, uri.AMQPlainAuth())
		case "EXTERNAL":
			config.SASL = append(config.SASL, &amqp091.ExternalAuth{})
		default:
			return nil, fmt.Errorf("unsupported auth_mechanism: %v", m)
		}
	}
	if config.SASL == nil {
		config.SASL = []amqp091.Authentication{uri.PlainAuth()}
	}
	var tlsCfg *tls.Config
	if uri.Scheme == "amqps" {
		if cfg.TLS != nil {
			tlsCfg = cfg.TLS.Clone()
		} else if tlsCfg, err = tlsConfigFromURI(uri); err != nil {
			return nil, err
		}
		if tlsCfg.ServerName == "" {
			tlsCfg.ServerName = uri.Host
		}
	}
	raw, err := dial("tcp", net.JoinHostPort(uri.Host, strconv.Itoa(uri.Port)))
	if err != nil {
		return nil, err
	}
	sock := raw
	if tlsCfg != nil {
		tc := tls.Client(raw, tlsCfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			raw.Close()
			return nil, err
		}
		sock = tc
	}
	c, err := amqp091.Open(newFrameConn(sock, onRewrite), config)
	if err != nil {
		sock.Close()
		return nil, err
	}
	return c, nil
}

// uriHeartbeat returns the heartbeat=<seconds> of the URL's query, which
// amqp091.ParseURI checks but keeps unexported.
func uriHeartbeat(url string) (hb time.Duration, ok bool) {
	i := strings.IndexByte(url, '?')
	if i < 0 {
		return 0, false
	}
	for _, kv := range strings.Split(url[i+1:], "&") {
		if v, found := strings.CutPrefix(kv, "heartbeat="); found {
			n, err := strconv.ParseUint(v, 10, 16)
			if err != nil {
				return 0, false // ParseURI refused it already
			}
			return time.Duration(n) * time.Second, true
		}
	}
	return 0, false
}

// tlsConfigFromURI is amqp091's: the certfile, keyfile, cacertfile and
// server_name_indication of the URL's query.
func tlsConfigFromURI(uri amqp091.URI) (*tls.Config, error) {
	var pool *x509.CertPool
	if uri.CACertFile != "" {
		data, err := os.ReadFile(uri.CACertFile)
		if err != nil {
			return nil, fmt.Errorf("read CA certificate: %w", err)
		}
		pool = x509.NewCertPool()
		pool.AppendCertsFromPEM(data)
	} else if sys, err := x509.SystemCertPool(); err != nil {
		return nil, fmt.Errorf("load system certificates: %w", err)
	} else {
		pool = sys
	}
	c := &tls.Config{RootCAs: pool, ServerName: uri.ServerName, MinVersion: tls.VersionTLS12}
	if uri.CertFile != "" && uri.KeyFile != "" {
		cert, err := tls.LoadX509KeyPair(uri.CertFile, uri.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("load client certificate: %w", err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}
