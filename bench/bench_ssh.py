"""SSH deploy and measuring overhead, side by side on one namespace device in one run.

    python bench/bench_ssh.py [--mb 256] [--rounds 3] [--model PATH/model.onnx]

Prints, each as a median over alternating rounds:
  1. upload throughput of EdgeGate's deploy (paramiko SFTP + sha256 verify on the device) vs
     OpenSSH's own `scp` to the same device, and their ratio;
  2. the time to redeploy an unchanged artifact (verify only, 0 bytes sent);
  3. the median decode latency the harness reports vs a bare onnxruntime loop run on the device
     by a plain script over the same SSH connection, and their ratio.
Without --model it measures the default suite's fp16 already in the cache (it builds nothing; it
says which command builds it when there is none).
Needs root (network namespaces) and openssh-server; run it alone, the machine has two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from benchlib import cached_suite_model  # noqa: E402

from sshdevices import SshDeviceFarm  # noqa: E402

from edgegate.deploy import deploy_tree  # noqa: E402
from edgegate.devicesetup import setup_device  # noqa: E402
from edgegate.profiles import load_profile  # noqa: E402
from edgegate.transport.ssh import SshTransport  # noqa: E402
from edgegate.variants.cache import file_sha256  # noqa: E402

BARE_LOOP = r"""
import sys, time, numpy as np, onnxruntime as ort
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
inputs = {i.name: i for i in session.get_inputs()}
past_names = [n for n in inputs if n.startswith("past_key_values.")]
outputs = ["logits"] + [o.name for o in session.get_outputs() if o.name.startswith("present.")]
prompt, tokens, rounds = list(range(100, 164)), int(sys.argv[2]), int(sys.argv[3])
samples = []
for r in range(rounds + 1):
    past = {n: np.zeros((1, inputs[n].shape[1], 0, inputs[n].shape[3]), np.float32) for n in past_names}
    ids = np.array([prompt], np.int64)
    length = 0
    for step in range(tokens + 1):
        feeds = {"input_ids": ids, "attention_mask": np.ones((1, length + ids.shape[1]), np.int64), **past}
        start = time.perf_counter_ns()
        result = session.run(outputs, feeds)
        elapsed = (time.perf_counter_ns() - start) / 1e6
        if step > 0 and r > 0:
            samples.append(elapsed)
        length += ids.shape[1]
        past = dict(zip(past_names, result[1:]))
        ids = np.array([[int(result[0][0, -1].argmax())]], np.int64)
print(float(np.median(samples)))
"""


def main() -> None:
    args = parse_args()
    # chosen before anything is started: without a model there is nothing to measure the latency on
    model = args.model or cached_suite_model("fp16")  # the bare loop below drives the plain export's layout
    with tempfile.TemporaryDirectory() as scratch, SshDeviceFarm(Path(scratch), prefix="bench") as farm:
        device = farm.start("dev")
        profile = Path(scratch) / "dev.yaml"
        profile.write_text(device.profile_yaml())
        transport = SshTransport(load_profile(profile))
        blob = Path(scratch) / "blob.bin"
        blob.write_bytes(os.urandom(args.mb * 1024 * 1024))
        rows = upload_rows(transport, device, blob, args.rounds)
        rows += latency_rows(transport, Path(scratch), model, args)
        transport.close()
    print_table(rows, farm.uses_namespaces)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=256, help="size of the uploaded file")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", type=Path, default=None, help="ONNX model for the latency comparison "
                        "(default: the default suite's fp16 in the cache, a plain export the bare loop can drive; "
                        "build it with `edgegate variants build suites/suite_smollm2.yaml --only fp16`)")
    parser.add_argument("--tokens", type=int, default=32)
    return parser.parse_args()


def upload_rows(transport: SshTransport, device, blob: Path, rounds: int) -> list[tuple[str, float, str]]:
    digest = {"blob.bin": file_sha256(blob)}
    ours, theirs, redeploy, raw = [], [], [], []
    for index in range(rounds):
        started = time.perf_counter()
        transport.put(blob, f"{device.home}/put-{index}.bin")
        raw.append(time.perf_counter() - started)
        started = time.perf_counter()
        result = deploy_tree(transport, {"blob.bin": blob}, f"bench-{index}", digest)
        ours.append(time.perf_counter() - started)
        assert result.bytes_sent == blob.stat().st_size
        theirs.append(scp_seconds(device, blob, f"{device.home}/scp-{index}.bin"))
        started = time.perf_counter()
        again = deploy_tree(transport, {"blob.bin": blob}, f"bench-{index}", digest)
        redeploy.append(time.perf_counter() - started)
        assert again.bytes_sent == 0
    mb = blob.stat().st_size / 1e6
    ours_rate, scp_rate = mb / statistics.median(ours), mb / statistics.median(theirs)
    raw_rate = mb / statistics.median(raw)
    return [
        ("EdgeGate upload (transport.put), MB/s", raw_rate, f"median of {rounds}, {mb:.0f} MB"),
        ("EdgeGate deploy (upload + sha256 on device + rename), MB/s", ours_rate, "what a first deploy costs"),
        ("OpenSSH scp, MB/s", scp_rate, "same device, same run"),
        ("ratio upload / scp", raw_rate / scp_rate, ""),
        ("ratio deploy / scp", ours_rate / scp_rate, ""),
        ("redeploy unchanged, s", statistics.median(redeploy), "0 bytes sent; sha256 re-verified on the device"),
    ]


def scp_seconds(device, blob: Path, remote: str) -> float:
    command = ["scp", "-q", "-i", str(device.key_file), "-o", f"UserKnownHostsFile={device.known_hosts}",
               "-o", "StrictHostKeyChecking=yes", "-P", str(device.port), str(blob), f"{device.user}@{device.host}:{remote}"]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - started


def latency_rows(transport: SshTransport, scratch: Path, model: Path,
                 args: argparse.Namespace) -> list[tuple[str, float, str]]:
    setup_device("dev", transport, scratch / "wheels", log=lambda _: None)
    transport.ensure_runner()
    folder = transport.stage(model.parent, {model.name: file_sha256(model)})
    remote_model = f"{folder}/{model.name}"
    job = {"model": remote_model, "providers": ["CPUExecutionProvider"], "threads": 0, "measurements": {
        "decode": {"prompt_ids": list(range(100, 164)), "tokens": args.tokens, "warmup": 1, "repetitions": 3}}}
    harness, bare = [], []
    for _ in range(args.rounds):
        events = list(transport.run_job(job, timeout_s=600))
        harness.append(next(e["value"] for e in events if e.get("name") == "decode_ms"))
        out = transport.run([transport.python(), "-c", BARE_LOOP, remote_model, str(args.tokens), "3"],
                            timeout_s=600, check=True)
        bare.append(float(out.stdout.strip().splitlines()[-1]))
    h, b = statistics.median(harness), statistics.median(bare)
    return [
        (f"harness decode p50, ms/token ({model.parent.name})", h, f"median of {args.rounds} runs"),
        ("bare onnxruntime loop p50, ms/token", b, "same device, same model, same run"),
        ("ratio harness / bare", h / b, ""),
    ]


def print_table(rows: list[tuple[str, float, str]], namespaced: bool) -> None:
    print(f"\ndevice: sshd in {'a network namespace' if namespaced else 'loopback'} on this machine")
    width = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:10.3f}  {note}")
    print(json.dumps({name: round(value, 4) for name, value, _ in rows}))


if __name__ == "__main__":
    main()
