# An Ernie external handler, unmodified: Ernie's Ruby library reads BERT
# requests on fd 3 and writes replies on fd 4. Served by warren daemon with
# protocol: ernie as /calc/add, /calc/mean and /calc/fail.
#
# Ernie's library: `gem install ernie` (require 'ernie'), or the compatible
# copy Warren's tests use, bertrpc/testdata/ruby/ernie.rb (ruby -I that dir).
require 'ernie'

module Calc
  def add(a, b)
    a + b
  end

  def mean(xs)
    xs.sum.to_f / xs.size
  end

  def fail(msg)
    raise ArgumentError, msg
  end
end

Ernie.expose(:calc, Calc)
