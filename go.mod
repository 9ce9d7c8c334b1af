module github.com/warrenrpc/warren

go 1.26

require (
	github.com/alecthomas/kong v1.17.0
	github.com/rabbitmq/amqp091-go v1.16.0
	go.uber.org/goleak v1.3.0
	gopkg.in/yaml.v3 v3.0.1
)

require github.com/kr/text v0.2.0 // indirect
