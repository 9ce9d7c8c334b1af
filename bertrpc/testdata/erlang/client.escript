#!/usr/bin/env escript
%% A BERT-RPC client in Erlang: gen_tcp with {packet, 4} and term_to_binary.
%% Usage: client.escript PORT MOD FUN ARGS [low|keep]
%%   ARGS is an Erlang list, e.g. "[1, 2]". With "low", an
%%   {info, priority, [low]} BERP goes first; with "keep", the call is made
%%   twice on the same connection. Prints each reply with ~p.
main([Port, Mod, Fun, Args | Rest]) ->
    {ok, Tokens, _} = erl_scan:string(Args ++ "."),
    {ok, ArgTerm} = erl_parse:parse_term(Tokens),
    {ok, S} = gen_tcp:connect("127.0.0.1", list_to_integer(Port),
                              [binary, {packet, 4}, {active, false}]),
    Call = term_to_binary({call, list_to_atom(Mod), list_to_atom(Fun), ArgTerm}),
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
    io:format(standard_error, "usage: client.escript PORT MOD FUN ARGS [low|keep]~n", []),
    halt(2).
