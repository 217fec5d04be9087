"""`backend chat`: stream one chat from a running backend and print it as it arrives."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from zarf_vllm.cli import CommandError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "chat",
        help="stream one chat from a running backend",
        description="Send one streaming chat to a backend (e.g. through `zarf connect` or a "
        "port-forward) and print the answer as it streams.",
    )
    parser.add_argument("message", help="the user's message")
    parser.add_argument("--address", default="127.0.0.1:50051", help="backend HOST:PORT")
    parser.add_argument("--system", help="a system message to send first")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument(
        "--wait",
        type=float,
        default=0,
        metavar="SECONDS",
        help="first wait up to SECONDS for the backend to report SERVING",
    )
    parser.add_argument(
        "--ca-file", type=Path, help="with TLS: the CA certificate to trust (the Secret's ca.crt)"
    )
    parser.add_argument("--cert-file", type=Path, help="with mutual TLS: the client certificate")
    parser.add_argument("--key-file", type=Path, help="with mutual TLS: the client's private key")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import grpc

    from zarf_vllm.backend.client import (
        StreamSummary,
        chat_request,
        stream_chat,
        tls_credentials,
        wait_until_serving,
    )

    messages = ([("system", args.system)] if args.system else []) + [("user", args.message)]
    request = chat_request(
        messages, max_new_tokens=args.max_new_tokens, temperature=args.temperature
    )
    if (args.cert_file or args.key_file) and not (
        args.ca_file and args.cert_file and args.key_file
    ):
        raise CommandError("mutual TLS needs --ca-file, --cert-file and --key-file together")
    try:
        credentials = (
            None
            if args.ca_file is None
            else tls_credentials(args.ca_file, args.cert_file, args.key_file)
        )
    except OSError as exc:
        raise CommandError(f"{exc.filename}: {exc.strerror}") from exc
    try:
        if args.wait:
            wait_until_serving(args.address, args.wait, credentials)
        for item in stream_chat(args.address, request, credentials):
            if isinstance(item, StreamSummary):
                print(
                    f"\n[{item.finish_reason.lower()}; {item.prompt_tokens} prompt + "
                    f"{item.completion_tokens} completion tokens; first token after "
                    f"{item.time_to_first_token_s * 1000:.0f} ms, "
                    f"{item.duration_s:.2f} s in all]",
                    file=sys.stderr,
                )
            else:
                print(item, end="", flush=True)
    except grpc.RpcError as exc:
        raise CommandError(f"{args.address}: {exc.code().name}: {exc.details()}") from exc
    except TimeoutError as exc:
        raise CommandError(str(exc)) from exc
    return 0
