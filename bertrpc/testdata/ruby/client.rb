# A BERT-RPC client like the bertrpc gem: one TCP connection per call.
# Usage: ruby client.rb PORT MOD FUN ARGS_RUBY [low]
#   prints the reply with inspect, or "ERROR <type> <code> <class> <detail>".
require 'socket'
require 'bert'

def call(port, mod, fun, args, prio = nil)
  sock = TCPSocket.new('127.0.0.1', port)
  if prio
    info = BERT.encode(t[:info, :priority, [prio]])
    sock.write([info.bytesize].pack('N') + info)
  end
  req = BERT.encode(t[:call, mod, fun, args])
  sock.write([req.bytesize].pack('N') + req)
  len = sock.read(4) or raise 'no header'
  data = sock.read(len.unpack1('N')) or raise 'no data'
  sock.close
  BERT.decode(data)
end

port, mod, fun, args, prio = ARGV
reply = call(Integer(port), mod.to_sym, fun.to_sym, eval(args), prio && prio.to_sym)
case reply[0]
when :reply then puts reply[1].inspect
when :error then puts "ERROR #{reply[1].to_a[0..3].join(' ')}"
else puts "UNEXPECTED #{reply.inspect}"
end
