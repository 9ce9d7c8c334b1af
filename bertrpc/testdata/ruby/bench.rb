# Sequential calls with a new connection per call, as Ruby's bertrpc gem
# makes them. Usage: ruby bench.rb PORT MOD FUN N
# Prints calls/s and latency percentiles (microseconds).
require 'socket'
require 'bert'

port, mod, fun, n = ARGV
port = Integer(port)
n = Integer(n || 2000)
req = BERT.encode(t[:call, mod.to_sym, fun.to_sym, [1, 2]])
frame = [req.bytesize].pack('N') + req
lat = []
t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
n.times do
  s = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  sock = TCPSocket.new('127.0.0.1', port)
  sock.setsockopt(Socket::IPPROTO_TCP, Socket::TCP_NODELAY, 1)
  sock.write(frame)
  len = sock.read(4).unpack1('N')
  r = BERT.decode(sock.read(len))
  sock.close
  raise "bad reply #{r.inspect}" unless r[0] == :reply && r[1] == 3
  lat << (Process.clock_gettime(Process::CLOCK_MONOTONIC) - s)
end
el = Process.clock_gettime(Process::CLOCK_MONOTONIC) - t0
lat.sort!
pct = ->(p) { (lat[(p * (lat.size - 1)).round] * 1e6).round }
puts format('calls=%d secs=%.3f calls_per_sec=%.0f p50_us=%d p99_us=%d', n, el, n / el, pct.(0.5), pct.(0.99))
