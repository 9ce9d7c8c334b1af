#!/usr/bin/env escript
%% A BERT-RPC client in Erlang: gen_tcp with {packet, 4} and term_to_binary.
%% Usage: client.escript PORT MOD FUN ARGS [low|keep|utf8]
%%   ARGS is an Erlang expression giving the argument list, e.g. "[1, 2]"
%%   or "[binary_to_term(<<131,119,2,104,105>>)]". With "low", an
%%   {info, priority, [low]} BERP goes first; with "keep", the call is made
%%   twice on the same connection; with "utf8", the request is encoded as
%%   OTP 26 does by default ({minor_version, 2}: every atom as
%%   SMALL_ATOM_UTF8_EXT), floats being NEW_FLOAT_EXT in any case. Prints
%%   each reply with ~p.
main([Port, Mod, Fun, Args | Rest]) ->
    {ok, Tokens, _} = erl_scan:string(Args ++ "."),
    {ok, Exprs} = erl_parse:parse_exprs(Tokens),
    {value, ArgTerm, _} = erl_eval:exprs(Exprs, []),
    {ok, S} = gen_tcp:connect("127.0.0.1", list_to_integer(Port),
                              [binary, {packet, 4}, {active, false}]),
    Req = {call, list_to_atom(Mod), list_to_atom(Fun), ArgTerm},
    Call = case Rest of
               ["utf8"] -> term_to_binary(Req, [{minor_version, 2}]);
               _ -> term_to_binary(Req)
           end,
    Times = case Rest of
                ["low"] -> ok = gen_tcp:send(S, term_to_binary({info, priority, [low]})), 1;
                ["keep"] -> 2;
                _ -> 1
            end,
    lists:foreach(fun(_) ->
                          ok = gen_tcp:send(S, Call),
                          {ok, Bin} = gen_tcp:recv(S, 0, 10000),
                          io:format("~p~n", [binary_to_term(Bin)])
                  end, lists:seq(1, Times)),
    ok = gen_tcp:close(S);
main(_) ->
    io:format(standard_error, "usage: client.escript PORT MOD FUN ARGS [low|keep|utf8]~n", []),
    halt(2).
