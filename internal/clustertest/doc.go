// Package clustertest holds Warren's tests on a three-node RabbitMQ cluster
// (scripts/rabbitmq-cluster): failover of transports between nodes and the
// fabric's recovery when a node dies. They kill and restart the cluster's
// nodes, never the default node of the other tests, so they run with the
// rest of the suite; all of them are in this one package, whose tests run
// one at a time. They need WARREN_CLUSTER_URLS (scripts/test sets it).
package clustertest
