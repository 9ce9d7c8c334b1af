module github.com/warrenrpc/warren

go 1.26

require github.com/alecthomas/kong v1.17.0

require (
	github.com/rabbitmq/amqp091-go v1.16.0 // indirect
	go.uber.org/goleak v1.3.0 // indirect
	gopkg.in/yaml.v3 v3.0.1 // indirect
)
