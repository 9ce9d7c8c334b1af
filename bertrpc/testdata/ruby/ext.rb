# An external handler in Ernie's style; run by the server as
#   ruby -I <this dir> ext.rb --procline xxx...
require 'ernie'

module Ext
  def add(a, b)
    a + b
  end

  def echo(x)
    x
  end

  # crash exits the worker without replying (the server must restart it).
  def crash
    exit!(3)
  end

  def sleep_ms(ms)
    sleep(ms / 1000.0)
    :ok
  end

  def raise_error(msg)
    raise ArgumentError, msg
  end

  # chatty writes to stdout and stderr: they are not the protocol's fds.
  def chatty(x)
    puts "noise on stdout"
    $stdout.flush
    warn "noise on stderr"
    x
  end

  # pid tells which worker answered.
  def pid
    Process.pid
  end

  # version reads VERSION from the environment file next to the script,
  # so reload tests can change the "code".
  def version
    File.read(File.join(ENV.fetch('EXT_STATE_DIR', '.'), 'version')).strip
  end

  # record appends tag to a file (for ordering tests).
  def record(tag)
    File.open(File.join(ENV.fetch('EXT_STATE_DIR', '.'), 'order'), 'a') { |f| f.puts(tag) }
    tag
  end

  # argv shows the command line arguments the worker got (procline check).
  def argv
    ARGV
  end
end

Ernie.expose(:ext, Ext)
