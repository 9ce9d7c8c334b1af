#!/usr/bin/env ruby
# A Warren plugin in Ruby (docs/plugins.md): /words/count counts the words
# of a string, /words/top returns the most frequent ones (config: limit).
require 'json'

config = JSON.parse(ENV.fetch('WARREN_PLUGIN_CONFIG', '{}'))
$stdout.sync = true

$stdin.each_line do |line|
  req = JSON.parse(line)
  text = req['params'].to_s
  reply = case req['method']
          when 'count' then { 'result' => text.split.size }
          when 'top'
            counts = text.downcase.scan(/\w+/).tally.sort_by { |w, n| [-n, w] }
            { 'result' => counts.first(config.fetch('limit', 3)).map(&:first) }
          else { 'error' => { 'code' => 'bad_request', 'message' => "no method #{req['method']}" } }
          end
  puts JSON.generate(reply.merge('id' => req['id']))
end
