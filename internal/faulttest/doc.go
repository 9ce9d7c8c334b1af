// Package faulttest holds Warren's broker fault tests: agents and mappers
// on RabbitMQ while the broker restarts or drops every connection. It has
// no API; its tests are named TestDisruptive... and run only when
// internal/testenv allows disrupting the shared broker (scripts/test's
// second pass, alone, one package at a time).
//
// Each test prints its figures with t.Logf; docs/reliability.md collects
// them. Run them alone with
//
//	WARREN_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/ WARREN_TEST_DISRUPT=1 \
//		go test -race -count=1 -p 1 -run '^TestDisruptive' -v ./internal/faulttest
package faulttest
