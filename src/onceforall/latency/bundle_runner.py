"""Time every model of an onceforall latency bundle on this device, without PyTorch.

Run it from the unpacked bundle (this file is the bundle's ``measure.py``):

    python measure.py --out results.json [--threads N] [--repeats N]

It needs Python 3.8 or newer, numpy and ONNX Runtime, nothing else:

  Android (Termux):  pkg install python python-numpy python-onnxruntime
                     (PyPI has no onnxruntime wheel for Android's C library; inside a
                     proot-distro Debian, pip install numpy onnxruntime works instead)
  Linux board:       python3 -m pip install numpy onnxruntime
                     (Jetson and other boards with an accelerator: your vendor's wheel;
                     the runner asks for the CPU provider, as the in-process table)

Every model of ``manifest.json`` is timed as ``ofa latency-table`` times it in-process:
per resolution, every model is warmed up, then timed in interleaved rounds (a fresh
seeded order each round; each timed call follows a few untimed ones). After every round
the results file is rewritten atomically, so the runner can be stopped at any moment
(Ctrl-C, a killed process, a phone going to sleep) and started again with the same
command: it resumes where it stopped and times nothing twice.

Send back the results file (--out) only; on the machine that made the bundle:

    ofa latency-table --run RUN --from-bundle results.json

This file is part of the onceforall package (``onceforall/latency/bundle_runner.py``)
and is copied into each bundle as it is; it must import nothing outside the standard
library, numpy and onnxruntime.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import sys
import tempfile
import time
import zipfile
import zlib

FORMAT = "onceforall-latency-bundle"
RESULTS_FORMAT = "onceforall-latency-results"
VERSION = 1  # of the manifest and of the results file
SETTLE = 3  # untimed calls before each timed one (as onceforall.latency.measure)
MODELS = "models.zip"  # beside measure.py and manifest.json: every model, by its file name


class BundleError(Exception):
    """Something the user can fix: printed in one line, exit code 2."""


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def canonical(data: object) -> bytes:
    """The bytes a checksum is taken of: sorted keys, no spaces."""
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode("utf-8")


def read_manifest(folder: str) -> tuple[dict, str]:
    """The bundle's manifest and its SHA-256 (of the file's bytes)."""
    path = os.path.join(folder, "manifest.json")
    if not os.path.isfile(path):
        raise BundleError(
            f"no manifest.json in {folder}: run measure.py from the unpacked bundle "
            "(unzip bundle.zip; cd into it)"
        )
    with open(path, "rb") as f:
        raw = f.read()
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise BundleError(f"{path} is damaged: not JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path} is not the manifest of an onceforall latency bundle")
    if manifest.get("version") != VERSION:
        raise BundleError(
            f"{path} is a version {manifest.get('version')} bundle; this runner reads "
            f"version {VERSION}"
        )
    return manifest, hashlib.sha256(raw).hexdigest()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key = line.split(":", 1)[0].strip().lower()
                if key in ("model name", "hardware", "processor") and ":" in line:
                    value = line.split(":", 1)[1].strip()
                    if value and not value.isdigit():
                        return value
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def describe_device(name: str | None) -> dict:
    import numpy
    import onnxruntime

    info = {
        "name": name or platform.node(),
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "system": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "onnxruntime": onnxruntime.__version__,
        "providers": ["CPUExecutionProvider"],
    }
    info["description"] = (
        f"{info['cpu']}, {info['logical_cores']} logical cores; {info['system']}; "
        f"onnxruntime {info['onnxruntime']}"
    )
    return info


class Progress:
    """Status on stderr: one line rewritten in place on a terminal (at most 5 times a
    second); elsewhere (a log file, a phone's shell without a tty) only the lines
    ``note`` is asked to keep."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def show(self, text: str) -> None:
        if self.tty and time.monotonic() - self.last > 0.2:
            self.last = time.monotonic()
            sys.stderr.write("\r" + text[:79].ljust(79))
            sys.stderr.flush()

    def note(self, text: str) -> None:
        sys.stderr.write(("\r" if self.tty else "") + text.ljust(79 if self.tty else 0) + "\n")
        sys.stderr.flush()


def write_results(path: str, payload: dict) -> None:
    """Write ``payload`` with its checksum: to a temporary file, synced, then renamed."""
    record = {"payload": payload, "sha256": hashlib.sha256(canonical(payload)).hexdigest()}
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".results-", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(record, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_results(path: str) -> dict:
    """The payload of a results file, checked against its checksum."""
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except ValueError as exc:
        raise BundleError(f"{path} is damaged or truncated: not JSON ({exc})") from None
    if not isinstance(record, dict) or not isinstance(record.get("payload"), dict):
        raise BundleError(f"{path} is not a results file of an onceforall latency bundle")
    if hashlib.sha256(canonical(record["payload"])).hexdigest() != record.get("sha256"):
        raise BundleError(f"{path} is damaged: its checksum does not match its content")
    payload = record["payload"]
    if payload.get("format") != RESULTS_FORMAT:
        raise BundleError(f"{path} is not a results file of an onceforall latency bundle")
    return payload


class Models:
    """The bundle's ``models.zip``: each model's bytes, checked against the manifest's
    SHA-256 (they are never unpacked to disk: a bundle of a large space is gigabytes
    unpacked and tens of MB zipped)."""

    def __init__(self, folder: str, manifest: dict) -> None:
        path = os.path.join(folder, MODELS)
        if not os.path.isfile(path):
            raise BundleError(f"the bundle lacks {MODELS}: unpack the whole bundle")
        try:
            self.zip = zipfile.ZipFile(path)
        except zipfile.BadZipFile as exc:
            raise BundleError(f"{MODELS} is damaged ({exc})") from None
        self.entries = manifest["models"]

    def read(self, name: str) -> bytes:
        entry = self.entries[name]
        try:
            data = self.zip.read(entry["file"])
        except (KeyError, zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise BundleError(f"{MODELS} is damaged: cannot read {entry['file']} ({exc})") from None
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise BundleError(f"{entry['file']} is damaged (SHA-256 differs from the manifest)")
        return data

    def check(self, status: Progress) -> None:
        """Read every model once, so that a damaged bundle is found before any timing."""
        for i, name in enumerate(self.entries):
            self.read(name)
            status.show(f"checking models {i + 1}/{len(self.entries)}")


class Model:
    """One ONNX model prepared for timing: a session and a fixed random input."""

    def __init__(self, data: bytes, entry: dict, threads: int) -> None:
        import numpy as np
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        shape = tuple(entry["input_shape"])
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        self.feed = {self.session.get_inputs()[0].name: x}

    def __call__(self) -> None:
        self.session.run(None, self.feed)

    def time_ms(self) -> float:
        start = time.perf_counter()
        self.session.run(None, self.feed)
        return (time.perf_counter() - start) * 1000.0


def measure(args: argparse.Namespace) -> int:
    folder = os.path.dirname(os.path.abspath(__file__))
    manifest, manifest_sha = read_manifest(folder)
    repeats = args.repeats or manifest["repeats"]
    warmup = manifest["warmup"] if args.warmup is None else args.warmup
    settings = {"threads": args.threads, "repeats": repeats, "warmup": warmup, "settle": SETTLE}
    groups = manifest["groups"]
    status = Progress()
    models_zip = Models(folder, manifest)
    if os.path.exists(args.out):
        payload = read_results(args.out)
        if payload.get("bundle_sha256") != manifest_sha:
            raise BundleError(
                f"{args.out} holds results of another bundle; choose another --out, or "
                "delete it to start over"
            )
        if payload["settings"] != settings:
            raise BundleError(
                f"{args.out} was started with {payload['settings']}, not {settings}; run "
                "the same command again to resume, or choose another --out"
            )
        done = sum(len(s) for s in payload["samples"].values())
        status.note(f"resuming {args.out}: {done} timings kept")
    else:
        models_zip.check(status)
        payload = {
            "format": RESULTS_FORMAT,
            "version": VERSION,
            "bundle_sha256": manifest_sha,
            "manifest": manifest,
            "settings": settings,
            "device": describe_device(args.device_name),
            "samples": {},
            "complete": False,
        }
        write_results(args.out, payload)
    samples = payload["samples"]
    start, seconds = time.perf_counter(), payload.get("seconds", 0.0)
    timed_now = 0
    for g, group in enumerate(groups):
        names = group["models"]
        rounds_done = min(len(samples.get(n, [])) for n in names)
        if rounds_done >= repeats:
            continue
        label = f"r={group['resolution']} ({g + 1}/{len(groups)})"
        status.note(f"{label}: {len(names)} models, {repeats - rounds_done} rounds to time")
        models = []
        for i, name in enumerate(names):
            status.show(f"{label}: loading and warming up {i + 1}/{len(names)}")
            entry = manifest["models"][name]
            models.append(Model(models_zip.read(name), entry, args.threads))
            for _ in range(warmup):
                models[-1]()
        rng = random.Random(group["seed"])
        order = list(range(len(models)))
        for round_ in range(repeats):
            rng.shuffle(order)  # the same orders as an uninterrupted run
            if round_ < rounds_done:
                continue
            for i in order:
                for _ in range(SETTLE):
                    models[i]()
                samples.setdefault(names[i], []).append(models[i].time_ms())
            payload["seconds"] = seconds + time.perf_counter() - start
            write_results(args.out, payload)
            timed_now += 1
            left = sum(repeats for _ in groups[g + 1 :]) + repeats - round_ - 1
            status.show(f"{label}: round {round_ + 1}/{repeats}, {_eta(start, timed_now, left)}")
        del models
    payload["complete"] = True
    write_results(args.out, payload)
    status.note(f"done: {len(samples)} models timed; send {args.out} back")
    return 0


def _eta(start: float, timed: int, left: int) -> str:
    """A rough time left: the rounds left at the pace of those timed so far."""
    pace = (time.perf_counter() - start) / timed
    return f"{left} rounds left in all, about {pace * left:.0f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="measure.py",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 2)[2].split("\n\nThis file")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", required=True, help="results file (resumed if it exists)")
    parser.add_argument(
        "--threads", type=int, default=0, help="intra-op threads (default 0: ONNX Runtime's)"
    )
    parser.add_argument("--repeats", type=int, help="timed rounds (default: the bundle's)")
    parser.add_argument("--warmup", type=int, help="untimed calls per model before the rounds")
    parser.add_argument("--device-name", help="a name for this device in the results")
    args = parser.parse_args(argv)
    if args.threads < 0 or (args.repeats is not None and args.repeats < 1):
        parser.error("--threads must be >= 0 and --repeats >= 1")
    try:
        import numpy  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        print(
            f"measure.py: needs numpy and onnxruntime ({exc}): pip install numpy onnxruntime",
            file=sys.stderr,
        )
        return 2
    try:
        return measure(args)
    except BundleError as exc:
        print(f"measure.py: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        Progress().note(
            f"interrupted; {args.out} keeps every finished round: run the same command again "
            "to resume"
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
