// Package setup provisions a RabbitMQ virtual host for a Warren
// application: the vhost, Warren's exchanges and dead-letter queue, an agent
// user and a mapper user with least-privilege permissions. It is what
// Nanite's rabbitconf.rb did with rabbitmqctl (a vhost /nanite, users nanite
// and mapper with full rights), done through the RabbitMQ management HTTP
// API and idempotently: [Apply] first reads what exists, changes only what
// differs and reports every step, so a second run changes nothing and says
// so.
//
// # Permissions
//
// RabbitMQ grants three regular expressions per user and vhost: configure
// (declare and delete), write (publish to an exchange, bind a queue) and
// read (consume from or purge a queue, bind from an exchange). The patterns from
// [AgentPermissions] and [MapperPermissions] name exactly the exchanges and
// queues of Warren's protocol (docs/protocol.md), operation by operation:
//
//   - both declare the exchanges and warren.dead (wire.Topology runs in
//     every agent and mapper), and their server-named amq.gen-* queues, which
//     are exclusive and so out of reach of every other connection;
//   - an agent declares, binds and consumes warren.agent.<id> and the service
//     queues warren.service.<path>, publishes heartbeats, dead letters to
//     warren.dlx and replies through the default exchange (amq.default); it
//     cannot publish to warren.request or warren.service, nor read
//     heartbeats. [AgentScope] limits the agent queues to some identities
//     and the service queues to some services or actors; without those
//     limits an agent user may consume, purge and delete every agent and
//     service queue;
//   - a mapper publishes requests and pushes to warren.request and
//     warren.service and announces to warren.control, and reads heartbeats;
//     it cannot consume, declare or delete agents' queues, publish
//     heartbeats, or publish through the default exchange;
//   - both publish events to warren.events and subscribe to them: declare,
//     bind and consume the subscriber queues warren.events.one.GROUP,
//     warren.events.host.GROUP.HOST and warren.events.all.IDENTITY, with
//     warren.dlx as dead-letter exchange (so the mapper too may write to
//     warren.dlx). [EventScope] limits the groups, [AgentScope]'s
//     identities the agent's durable All subscriptions,
//     [EventTopicPermissions] (Plan.EventPrefixes) the keys and patterns
//     through RabbitMQ topic permissions, and EventScope.NoEvents
//     withholds events altogether.
//
// What RabbitMQ's permissions cannot express is listed in
// docs/operations.md: write on amq.default reaches every queue of the vhost
// by name; routing keys of direct exchanges are not checked, so an agent can
// bind its own queue with another agent's identity; configure on an exchange
// or queue also allows deleting it, read on a queue purging it; without
// event prefixes any event key may be published and any pattern bound;
// and nothing
// ties a heartbeat to the user that publishes it, so in plain mode any agent
// user can register or unregister any agent identity (secure mode signs
// heartbeats).
package setup
