"""Data pipeline benchmark: shards on disk -> packed batches.

Writes pre-tokenized shards with long-tailed (lognormal) sample lengths, then measures
  * throughput: non-pad tokens per second of CPU time (one process = one core) for the
    whole TrainStream (tar reading, validation, shuffle buffer, mixer, packer, tensors);
  * packing efficiency (share of non-pad tokens) of best-fit packing beside naive
    concatenation (cuts samples), pad-to-longest per micro-batch and one sample per row;
  * the checkpointed stream state at the middle of the stream (buffered samples are
    references) and the time a resume takes to re-read the buffered samples.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_data.py [--tokens 8e6] [--seq-len 2048]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/machine.py, also when loaded by path
from machine import cpu_model  # noqa: E402


def lengths(n_tokens: int, seq_len: int, median: int, sigma: float, rng) -> np.ndarray:
    out, total = [], 0
    while total < n_tokens:
        n = np.clip(rng.lognormal(np.log(median), sigma, 4096).astype(np.int64), 16, seq_len)
        out.append(n)
        total += int(n.sum())
    n = np.concatenate(out)
    return n[: int(np.searchsorted(np.cumsum(n), n_tokens)) + 1]


def write(out_dir: Path, tokenizer, lens: np.ndarray, rng) -> None:
    from delia_dist.data import ShardWriter
    vocab = len(tokenizer)
    with ShardWriter(out_dir, tokenizer, max_shard_bytes=64 << 20) as w:
        for n in lens:
            ids = rng.integers(7, vocab, n, dtype=np.int32)
            mask = np.zeros(n, np.uint8)
            mask[n // 3:] = 1
            # about 4 bytes of text per token, as a real record's JSON carries
            record = json.dumps({"messages": [{"role": "user", "content": "x" * int(n)},
                                              {"role": "assistant", "content": "y" * int(3 * n)}]})
            w.write_tokenized(record.encode(), ids, mask)


def baselines(lens: np.ndarray, seq_len: int, batch: int) -> dict:
    total = int(lens.sum())
    rows_naive = -(-total // seq_len)
    cut = int(np.count_nonzero(np.diff(np.cumsum(lens) // seq_len) > 0))
    pad_longest = sum(batch * int(lens[i:i + batch].max()) for i in range(0, len(lens), batch))
    return {"naive concatenation": (total / (rows_naive * seq_len), f"{cut / len(lens):.1%} of samples cut"),
            "pad to longest (per micro-batch)": (total / pad_longest, "no sample cut"),
            "one sample per row (pad to seq_len)": (total / (len(lens) * seq_len), "no sample cut")}


def run_stream(manifest: Path, tokenizer, seq_len: int, batch: int, shuffle_buffer: int, pack_buffer: int):
    from delia_dist.config import DataConfig, SourceConfig
    from delia_dist.data import build_train_stream
    cfg = DataConfig(sources=[SourceConfig("bench", str(manifest), 1.0, on_exhausted="stop")],
                     seq_len=seq_len, shuffle_buffer=shuffle_buffer, pack_buffer=pack_buffer)
    cfg.validate()
    stream = build_train_stream(cfg, tokenizer, micro_batch_size=batch)
    total = json.loads(manifest.read_text())["tokens"]
    t0, c0 = time.perf_counter(), time.process_time()
    tokens = rows = 0
    state = None
    for b in stream:
        tokens += int((b["segment_ids"] > 0).sum())
        rows += b["input_ids"].shape[0]
        if state is None and tokens >= total // 2:
            t, c = time.perf_counter(), time.process_time()
            state = resume_cost(stream, cfg, tokenizer, batch)
            t0 += time.perf_counter() - t  # not part of the throughput
            c0 += time.process_time() - c
    return tokens, rows, time.perf_counter() - t0, time.process_time() - c0, stream, state


def resume_cost(stream, cfg, tokenizer, batch) -> tuple[int, float, float]:
    """(bytes of the saved state, wall and CPU seconds to load it into a fresh stream)."""
    import io

    import torch

    from delia_dist.data import build_train_stream
    buf = io.BytesIO()
    torch.save(stream.state_dict(), buf)
    size = buf.tell()
    buf.seek(0)
    fresh = build_train_stream(cfg, tokenizer, micro_batch_size=batch)
    t, c = time.perf_counter(), time.process_time()
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    return size, time.perf_counter() - t, time.process_time() - c


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=float, default=8e6, help="tokens to shard and stream")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--median", type=int, default=250, help="median sample length (tokens)")
    ap.add_argument("--sigma", type=float, default=1.0, help="lognormal sigma of sample lengths")
    ap.add_argument("--shuffle-buffer", type=int, default=2000)
    ap.add_argument("--pack-buffer", type=int, default=64)
    args = ap.parse_args()

    from delia_dist.model.tiny import train_tokenizer
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train_tokenizer(tmp / "tok")
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(tmp / "tok")
        lens = lengths(int(args.tokens), args.seq_len, args.median, args.sigma, rng)
        t = time.perf_counter()
        write(tmp / "shards", tok, lens, rng)
        write_s = time.perf_counter() - t
        size = sum(p.stat().st_size for p in (tmp / "shards").glob("*.tar"))
        tokens, rows, wall, cpu, stream, (state_bytes, resume_s, resume_cpu) = run_stream(
            tmp / "shards" / "manifest.json", tok, args.seq_len, args.batch, args.shuffle_buffer, args.pack_buffer)
    assert tokens == int(lens.sum()), (tokens, int(lens.sum()))
    print(f"machine: {cpu_model()}; date {time.strftime('%Y-%m-%d')}")
    print(f"data: {len(lens)} samples, {tokens} tokens, lognormal(median {args.median}, sigma {args.sigma}) "
          f"clipped to [16, {args.seq_len}], mean {lens.mean():.0f}, p99 {np.percentile(lens, 99):.0f}; "
          f"{size / 2**20:.0f} MiB of shards (written in {write_s:.1f} s)")
    print(f"stream: seq_len {args.seq_len}, micro-batch {args.batch}, shuffle buffer {args.shuffle_buffer}, "
          f"pack buffer {args.pack_buffer}")
    print(f"throughput: {tokens / cpu / 1e6:.2f} M tokens/s per core (CPU time {cpu:.2f} s, wall {wall:.2f} s)")
    print(f"state at mid-stream: {state_bytes / 1024:.0f} KiB (shuffle buffer {args.shuffle_buffer} by "
          f"reference); resume re-reads the buffered samples in {resume_s:.2f} s "
          f"(CPU {resume_cpu:.2f} s)")
    print("\n| packing | non-pad tokens | note |\n|---|---|---|")
    print(f"| best fit, buffer {args.pack_buffer} (delia) | {stream.packing_efficiency:.2%} | no sample cut |")
    for name, (eff, note) in baselines(lens, args.seq_len, args.batch).items():
        print(f"| {name} | {eff:.2%} | {note} |")


if __name__ == "__main__":
    main()
