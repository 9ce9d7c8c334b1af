# ernie.rb - a minimal library for writing Ernie external handlers in Ruby,
# written for Warren's tests from the protocol (not a copy of Ernie's).
#
# Same API as Ernie's Ruby library:
#
#   require 'ernie'
#   module Ext
#     def add(a, b) a + b end
#   end
#   Ernie.expose(:ext, Ext)
#
# The handler starts when the script ends (at_exit) unless
# Ernie.auto_start = false. It reads 4-byte-length-framed BERT requests on
# file descriptor 3 and writes replies on file descriptor 4; stdin and
# stdout are left alone. Logging is off unless logfile/loglevel are set.
require 'bert'
require 'logger'

class Ernie
  VERSION = '2.5.1-warren'

  class ServerError < StandardError; end

  class Mod
    attr_reader :name, :funs

    def initialize(name)
      @name = name
      @funs = {}
    end

    def fun(name, block)
      raise TypeError, 'block required' if block.nil?
      @funs[name] = block
    end
  end

  class << self
    attr_accessor :mods, :current_mod, :log, :auto_start, :count, :virgin_procline
  end

  self.mods = {}
  self.current_mod = nil
  self.log = Logger.new(nil)
  self.auto_start = true
  self.count = 0
  self.virgin_procline = $0

  # Define module +name+ with the functions the block defines via fun.
  def self.mod(name, block)
    self.current_mod = Mod.new(name)
    mods[name] = current_mod
    block.call
  end

  def self.fun(name, block)
    current_mod.fun(name, block)
  end

  # Expose every public method of the Ruby module +mixin+ as BERT-RPC
  # module +name+. Returns the object the methods run on.
  def self.expose(name, mixin)
    target = Object.new
    target.extend(mixin)
    mod(name, lambda {
      mixin.public_instance_methods.each { |m| fun(m.to_sym, target.method(m)) }
    })
    target
  end

  def self.logfile(file)
    level = log.level
    self.log = Logger.new(file)
    log.level = level
  end

  def self.loglevel(level)
    log.level = level
  end

  def self.dispatch(mod, fun, args)
    m = mods[mod] or raise ServerError, "No such module '#{mod}'"
    f = m.funs[fun] or raise ServerError, "No such function '#{mod}:#{fun}'"
    f.call(*args)
  end

  # One 4-byte big-endian length, then that many bytes of BERT.
  def self.read_berp(io)
    header = io.read(4)
    return nil if header.nil? || header.bytesize < 4
    size = header.unpack1('N')
    data = io.read(size)
    return nil if data.nil? || data.bytesize < size
    BERT.decode(data)
  end

  def self.write_berp(io, term)
    data = BERT.encode(term)
    io.write([data.bytesize].pack('N') + data)
  end

  def self.error_reply(type, e)
    t[:error, t[type, 0, e.class.to_s, e.message, e.backtrace || []]]
  end

  # Serve requests until the server closes file descriptor 3.
  def self.start
    procline('starting')
    log.info("(#{Process.pid}) Starting")
    input = IO.new(3, 'rb')
    output = IO.new(4, 'wb')
    output.sync = true
    loop do
      procline('waiting')
      req = read_berp(input)
      if req.nil?
        log.info("(#{Process.pid}) Could not read BERP length header. Ernie server may have gone away. Exiting now.")
        exit!(0)
      end
      self.count += 1
      kind = req.is_a?(Array) && req.size == 4 ? req[0] : nil
      case kind
      when :call
        _, mod, fun, args = req
        procline("#{mod}:#{fun}(#{args})")
        log.info("-> #{req.inspect}")
        reply =
          begin
            t[:reply, dispatch(mod, fun, args)]
          rescue ServerError => e
            error_reply(:server, e)
          rescue Object => e
            error_reply(:user, e)
          end
        log.debug("<- #{reply.inspect}")
        write_berp(output, reply)
      when :cast
        _, mod, fun, args = req
        procline("#{mod}:#{fun}(#{args})")
        log.info("-> #{req.inspect}")
        begin
          dispatch(mod, fun, args)
        rescue Object
          # a cast has nobody to tell
        end
        write_berp(output, t[:noreply])
      else
        procline('invalid request')
        write_berp(output, t[:error, t[:server, 0, "Invalid request: #{req.inspect}"]])
      end
    end
  end

  # Rewrite the process title within the space the server reserved with
  # --procline padding.
  def self.procline(msg)
    $0 = "ernie handler #{VERSION} (ruby) - #{virgin_procline} - [#{count}] #{msg}"[0..159]
  end

  def self.version
    VERSION
  end
end

def logfile(name)
  Ernie.logfile(name)
end

def loglevel(level)
  Ernie.loglevel(level)
end

at_exit do
  Ernie.start if Ernie.auto_start && $!.nil?
end
