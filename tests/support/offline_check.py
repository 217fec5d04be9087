"""Run inside a fresh network namespace (see test_lifecycle.py): bring loopback up, show that
there is no other interface and no route, then start the backend and chat with it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).parents[1]))

from support.backend_process import BackendProcess
from zarf_vllm.backend.proto.chat import chat_pb2, chat_pb2_grpc


def main(model_dir: Path, workdir: Path) -> int:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    names = sorted(line.split(":")[1].strip() for line in links.stdout.splitlines())
    print("interfaces:", " ".join(names))
    routes = Path("/proc/net/route").read_text().splitlines()[1:]
    print("routes:", len(routes))

    backend = BackendProcess(model_dir, workdir, {"engine": {"max_model_len": 512}}).start()
    try:
        backend.wait_serving()
        with grpc.insecure_channel(backend.address) as channel:
            request = chat_pb2.ChatCompletionRequest(
                chat_items=[chat_pb2.ChatItem(content="Hello")], max_new_tokens=8
            )
            response = chat_pb2_grpc.ChatCompletionServiceStub(channel).ChatComplete(request)
        print("chat:", "ok" if response.usage.completion_tokens > 0 else "empty")
    finally:
        backend.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1]), Path(sys.argv[2])))
