"""The openai client against vLLM's own OpenAI-compatible server on loopback (tiny model):
the round trip works, and a random model's garbage paraphrases end in a clear error."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from portutil import free_port

from delia_dist.gen.vllm_worker import REPO, gen_python
from delia_dist.health import ServerNotReady, wait_healthy

pytestmark = pytest.mark.skipif(not gen_python().exists(),
                                reason="vLLM environment absent (scripts/install.sh --gen makes .venv-gen)")


@pytest.fixture(scope="module")
def vllm_server(model_dir):
    model = model_dir
    port = free_port()
    log = open(model / "server.log", "w")
    proc = subprocess.Popen([str(gen_python()), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
                             "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(port),
                             "--max-model-len", "512", "--enforce-eager"], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "TORCHDYNAMO_DISABLE": "1",
                                 "PYTHONPATH": str(REPO)}, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_healthy(f"{url}/health", 240, alive=lambda: proc.poll() is None, log=model / "server.log")
        except ServerNotReady as e:
            pytest.fail(str(e))
        yield url + "/v1"
    finally:
        os.killpg(proc.pid, 9)
        proc.wait(timeout=30)


def test_openai_client_round_trip(vllm_server):
    from openai import OpenAI
    client = OpenAI(api_key="EMPTY", base_url=vllm_server, timeout=60)
    reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hello"}],
                                           max_tokens=8, temperature=0.0, seed=0)
    assert isinstance(reply.choices[0].message.content, str) and reply.usage.completion_tokens <= 8


def test_garbage_paraphrases_from_a_random_model_end_in_a_clear_error(vllm_server, tmp_path):
    inst = tmp_path / "tasks.jsonl"
    inst.write_text(json.dumps({"instruction": "Translate to English:\n{source}"}) + "\n")
    cmd = [sys.executable, "-m", "delia_dist.cli", "data", "diversify", str(inst), "--out", str(tmp_path / "p.jsonl"),
           "--base-url", vllm_server, "--model", "tiny", "-k", "2", "--set", "generate.diversify.max_retries=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "valid paraphrases after 4 rounds" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "p.jsonl").exists()
