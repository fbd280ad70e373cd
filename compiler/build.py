"""Fleet builds: a manifest of models x targets, compiled incrementally through an executor.

    edgec build edgec.toml              # every (model, target) pair, serially, into out/<model>/<target>/
    edgec build edgec.toml -j 2         # a local process pool
    edgec build edgec.toml --ray [ADDR] # Ray tasks (the optional extra edgec[ray]); a local Ray without ADDR

Each pair has a content key: sha256 over the model's bytes (or the factory's source and shape), the
calibration and sample data (file bytes, every file of a folder), its options, the target's definition
and edgec itself (version and the bytes of its source). A pair whose folder holds a build stamp with the
same key is not rebuilt (``force`` rebuilds). Jobs receive their inputs as bytes and return their output
files as bytes, so a Ray cluster needs no shared filesystem and every executor writes the same files; the
driver replaces a pair's folder whole, so nothing stale survives. One failing pair does not stop the
others: its row in the index carries the one-line error.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import html
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgec import targets
from edgec.errors import EXIT_BUDGET, EXIT_INTERNAL, EXIT_OK, EXIT_USER, EdgecError

if TYPE_CHECKING:  # Python 3.10 has no typing.Self
    from typing_extensions import Self

STAMP = "build.json"
MODEL_KEYS = {"path", "factory", "shape", "calib", "samples", "shapes", "targets", "options"}
TOP_KEYS = {"out", "targets", "target_file", "options", "target_options", "models"}


@dataclasses.dataclass(frozen=True)
class Job:
    """One (model, target) pair; paths are absolute, options merged (manifest < target < model)."""

    model: str
    target: str
    path: str | None
    factory: str | None
    shape: tuple[int, ...] | None
    calib: str | None
    samples: str | None
    shapes: dict[str, tuple[int, ...]] | None
    options: dict[str, Any]
    target_file: str | None
    key: str = ""

    @property
    def folder(self) -> str:
        return f"{self.model}/{self.target}"


@dataclasses.dataclass
class Manifest:
    path: Path
    out: Path
    jobs: list[Job]


def load_manifest(path: str | os.PathLike) -> Manifest:
    p = Path(path)
    table = targets.read_toml(p, str(p))
    root = p.resolve().parent
    _unknown(table, TOP_KEYS, str(p))
    models = table.get("models")
    if not isinstance(models, dict) or not models:
        raise EdgecError(f"{p}: no [models.NAME] tables", hint="see README: Fleet builds")
    tfile = _resolve(root, table.get("target_file"))
    default_targets = table.get("targets", [])
    jobs = []
    for name, m in models.items():
        where = f"{p}: [models.{name}]"
        if not isinstance(m, dict):
            raise EdgecError(f"{where} must be a table")
        _unknown(m, MODEL_KEYS, where)
        if ("path" in m) == ("factory" in m):
            raise EdgecError(f"{where} needs exactly one of path = \"model.onnx\" or factory = \"pkg.mod:fn\"")
        if "factory" in m and not isinstance(m.get("shape"), list):
            raise EdgecError(f"{where}: a factory needs shape = [1, 3, 224, 224]")
        model_path = _resolve(root, m.get("path"))
        if model_path is not None and not Path(model_path).is_file():
            raise EdgecError(f"{where}: model file {model_path} not found")
        names = m.get("targets", default_targets)
        if not isinstance(names, list) or not names:
            raise EdgecError(f"{where} has no targets", hint="targets = [\"cpu-fp32\", \"cpu-int8\"]")
        for t in names:
            try:
                targets.get(t, tfile)
            except EdgecError as exc:
                raise EdgecError(f"{where}: {exc.message}", hint=exc.hint) from None
            options = {**table.get("options", {}), **table.get("target_options", {}).get(t, {}),
                       **m.get("options", {})}
            shapes = {k: tuple(v) for k, v in m["shapes"].items()} if m.get("shapes") else None
            jobs.append(Job(name, t, model_path, m.get("factory"), tuple(m["shape"]) if m.get("shape") else None,
                            _resolve(root, m.get("calib")), _resolve(root, m.get("samples")), shapes, options,
                            tfile))
    out = Path(_resolve(root, table.get("out", "out")) or "out")
    return Manifest(p, out, [dataclasses.replace(j, key=job_key(j)) for j in jobs])


def build(manifest: Manifest, *, jobs: int = 1, ray_address: str | None = None, use_ray: bool = False,
          force: bool = False, on_row: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Compile every pair whose key changed; write the index (JSON and HTML); return its rows."""
    rows: dict[str, dict[str, Any]] = {}
    todo = []
    for job in manifest.jobs:
        old = _stamp(manifest.out / job.folder)
        if not force and old is not None and old.get("key") == job.key and old.get("status") == "built":
            rows[job.folder] = {**old, "status": "cached"}
            if on_row:
                on_row(rows[job.folder])
        else:
            todo.append(job)
    with Executor(jobs, use_ray, ray_address) as ex:
        futures = [(job, ex.submit(run_job, job, pack(job) if use_ray else None)) for job in todo]
        for job, fut in futures:
            try:
                result = fut()
            except Exception as exc:  # noqa: BLE001 - a worker that died still gets its row
                result = {"status": "failed", "error": f"internal error: {type(exc).__name__}: {exc}",
                          "exit": EXIT_INTERNAL, "files": {}}
            rows[job.folder] = _store(manifest.out, job, result)
            if on_row:
                on_row(rows[job.folder])
    ordered = [rows[j.folder] for j in manifest.jobs]
    write_index(manifest.out, ordered)
    return ordered


def exit_code(rows: list[dict[str, Any]]) -> int:
    codes = {r.get("exit", EXIT_OK) for r in rows if r["status"] == "failed"}
    for code in (EXIT_INTERNAL, EXIT_USER, EXIT_BUDGET):
        if code in codes:
            return code
    return EXIT_OK


# ------------------------------------------------------------------------------------------- keys
def job_key(job: Job) -> str:
    h = hashlib.sha256()
    for part in (_model_digest(job), _data_digest(job.calib), _data_digest(job.samples),
                 json.dumps(job.options, sort_keys=True, default=str), json.dumps(job.shapes, sort_keys=True),
                 json.dumps(dataclasses.asdict(targets.get(job.target, job.target_file)), sort_keys=True,
                            default=str), edgec_digest()):
        h.update(part.encode() + b"\0")
    return h.hexdigest()


def edgec_digest() -> str:
    """edgec's version and the bytes of its own source: a changed compiler rebuilds everything."""
    import edgec

    h = hashlib.sha256(edgec.__version__.encode())
    roots = sorted({Path(m.__file__).parent for m in _edgec_packages()})
    for root in roots:
        for f in sorted(root.rglob("*")):
            if f.suffix in (".py", ".toml") and "__pycache__" not in f.parts:
                h.update(str(f.relative_to(root)).encode() + f.read_bytes())
    return h.hexdigest()


def _edgec_packages() -> list[Any]:
    import edgec
    import edgec.backends
    import edgec.passes

    return [edgec, edgec.passes, edgec.backends]


def _model_digest(job: Job) -> str:
    if job.path is not None:
        return _file_digest(Path(job.path))
    import importlib.util

    module = (job.factory or "").partition(":")[0]
    spec = importlib.util.find_spec(module) if module else None
    source = Path(spec.origin).read_bytes() if spec and spec.origin and Path(spec.origin).is_file() else b""
    return hashlib.sha256(f"{job.factory}{job.shape}".encode() + source).hexdigest()


def _data_digest(spec: str | None) -> str:
    if spec is None or not Path(spec).exists():
        return str(spec)  # "random", "module:function" or absent
    return _file_digest(Path(spec))


def _file_digest(p: Path) -> str:
    h = hashlib.sha256()
    for f in _files(p):
        h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def _files(p: Path) -> list[Path]:
    return sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]


# ------------------------------------------------------------------------------------------- jobs
def pack(job: Job) -> dict[str, dict[str, bytes]]:
    """The job's input files as bytes, for workers that do not share this machine's filesystem."""
    out: dict[str, dict[str, bytes]] = {}
    for field in ("path", "calib", "samples"):
        spec = getattr(job, field)
        if spec is not None and Path(spec).exists():
            p = Path(spec)
            out[field] = {str(f.relative_to(p)) if p.is_dir() else p.name: f.read_bytes() for f in _files(p)}
    return out


def run_job(job: Job, files: dict[str, dict[str, bytes]] | None = None) -> dict[str, Any]:
    """Compile one pair in a temp folder; return its status, figures and output files as bytes."""
    import edgec
    from edgec.export import export_factory

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgec-build-") as tmp:
        root = Path(tmp)
        paths = {f: getattr(job, f) for f in ("path", "calib", "samples")}
        for field, content in (files or {}).items():
            base = root / "in" / field
            for rel, data in content.items():
                (base / rel).parent.mkdir(parents=True, exist_ok=True)
                (base / rel).write_bytes(data)
            original = Path(str(paths[field]))
            paths[field] = str(base / original.name) if len(content) == 1 and not original.is_dir() else str(base)
        try:
            model = paths["path"]
            if model is None:
                model = str(export_factory(str(job.factory), [job.shape or ()], root / "exported.onnx"))
            res = edgec.compile(model, target=job.target, calib=paths["calib"], samples=paths["samples"],
                                shapes=job.shapes, target_file=job.target_file, options=dict(job.options),
                                out_dir=root / "out")
        except EdgecError as exc:
            return {"status": "failed", "error": str(exc), "exit": getattr(exc, "exit_code", EXIT_USER),
                    "files": {}, "seconds": round(time.perf_counter() - start, 2)}
        except Exception as exc:  # noqa: BLE001 - one pair's bug must not stop the fleet
            first = str(exc).splitlines()[0][:300] if str(exc) else ""
            return {"status": "failed", "error": f"internal error: {type(exc).__name__}: {first}",
                    "exit": EXIT_INTERNAL, "files": {}, "seconds": round(time.perf_counter() - start, 2)}
        figures = res.artifacts.figures if res.artifacts else {}
        drift = figures.get("drift") or {}
        return {"status": "built", "error": "", "seconds": round(time.perf_counter() - start, 2),
                "bytes": figures.get("bytes"), "latency_ms": (figures.get("latency") or {}).get("median_ms"),
                "sqnr_db": drift.get("sqnr_db"), "files": {str(f.relative_to(root / "out")): f.read_bytes()
                                                           for f in _files(root / "out")}}


def _store(out: Path, job: Job, result: dict[str, Any]) -> dict[str, Any]:
    """Replace the pair's folder whole with the job's files and a stamp; a failed pair keeps no artifact."""
    row = {"model": job.model, "target": job.target, "key": job.key,
           **{k: v for k, v in result.items() if k != "files"}}
    final = out / job.folder
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{job.target}.", suffix=".tmp", dir=final.parent))
    for rel, data in result.get("files", {}).items():
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        (stage / rel).write_bytes(data)
    (stage / STAMP).write_text(json.dumps(row, indent=1, default=str))
    if final.exists():
        old = final.with_name(f".{job.target}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(stage, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(stage, final)
    return row


def _stamp(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / STAMP).read_text())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------------------- executors
_NO_SHARED = object()
_SHARED: Any = _NO_SHARED  # a pool worker's copy of the executor's shared object (set by its initializer)


def _set_shared(shared: Any) -> None:
    global _SHARED
    _SHARED = shared


def _with_shared(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(_SHARED, *args)


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    """What a Ray task runs: Ray resolves a top-level ObjectRef argument (the shared object) to its value."""
    return fn(*args)


class Executor:
    """Runs independent calls in-process (``jobs=1``), in a local process pool (``jobs>1``) or as Ray tasks.

    ``submit(fn, *args)`` returns a callable giving ``fn``'s result; ``map`` keeps the order of its items.
    ``fn`` must be a module-level function (it is pickled by reference) and its arguments plain data:
    bytes, arrays, dicts, never paths, so a Ray node needs no shared filesystem. ``shared``: one object
    every call receives as its first argument, sent once per worker (the pool's initializer) or once per
    cluster (Ray's object store), not once per call. The build's pairs, the sensitivity analysis's and the
    mixed-precision search's candidates all run through this class, so their results do not depend on
    which executor ran them (each call is a pure function of its arguments).
    """

    def __init__(self, jobs: int = 1, use_ray: bool = False, address: str | None = None,
                 shared: Any = _NO_SHARED) -> None:
        if jobs < 1:
            raise EdgecError(f"-j {jobs}: must be at least 1")
        self.jobs, self.use_ray, self.address, self.shared = jobs, use_ray, address, shared
        self.pool: concurrent.futures.Executor | None = None
        self.width = 1 if not use_ray else 0  # how many calls run at once (Ray: the cluster's CPUs)
        self._ref: Any = None
        self._ray: Any = None

    def __enter__(self) -> Self:
        if self.use_ray:
            try:
                import ray
            except ImportError:
                raise EdgecError("--ray needs Ray", hint="pip install 'edgec[ray]'") from None
            try:
                ray.init(address=self.address or None, ignore_reinit_error=True, include_dashboard=False,
                         log_to_driver=False, logging_level=logging.ERROR)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise EdgecError(f"--ray {self.address or ''}: cannot reach a Ray cluster ({str(exc)[:200]})",
                                 hint="start one with `ray start --head` or give its address") from None
            self._ray = ray.remote(_call)
            self.width = max(1, int(ray.cluster_resources().get("CPU", 1)))
            if self.shared is not _NO_SHARED:
                self._ref = ray.put(self.shared)
        elif self.jobs > 1:
            # spawn: forking a process that already holds ONNX Runtime's thread pools is not safe
            # the shared object goes to each worker once (its initializer), not with every call
            self.pool = concurrent.futures.ProcessPoolExecutor(
                self.jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_set_shared,
                initargs=(self.shared,))
            self.width = self.jobs
        return self

    def submit(self, fn: Callable[..., Any], *args: Any) -> Callable[[], Any]:
        lead = () if self.shared is _NO_SHARED else (self.shared,)
        if self._ray is not None:
            import ray

            ref = self._ray.remote(fn, *((self._ref,) if lead else ()), *args)  # started now
            return lambda: ray.get(ref)
        if self.pool is not None:
            future = self.pool.submit(_with_shared, fn, *args) if lead else self.pool.submit(fn, *args)
            return future.result
        return lambda: fn(*lead, *args)

    def map(self, fn: Callable[..., Any], items: list[tuple[Any, ...]]) -> list[Any]:
        """``[fn(*item) for item in items]``, run on the executor; results in the order of ``items``."""
        pending = [self.submit(fn, *item) for item in items]
        return [get() for get in pending]

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
        if self.use_ray:
            import ray

            ray.shutdown()


# ------------------------------------------------------------------------------------------ index
def write_index(out: Path, rows: list[dict[str, Any]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "index.json").write_text(json.dumps(rows, indent=1, default=str))
    cells = "".join(
        f"<tr class='{html.escape(r['status'])}'>" + "".join(f"<td>{html.escape(c)}</td>" for c in row[:7])
        + "<td>" + (f"<a href='{html.escape(r['model'])}/{html.escape(r['target'])}/report.html'>report</a>"
                    if r["status"] != "failed" else html.escape(row[7])) + "</td></tr>"
        for r, row in zip(rows, iter_rows(rows)))
    (out / "index.html").write_text(
        "<!doctype html><meta charset='utf-8'><title>edgec build</title><style>body{font:14px sans-serif}"
        "td,th{padding:2px 8px;text-align:left}.failed{color:#b00}</style><h1>edgec build</h1><table>"
        "<tr><th>model</th><th>target</th><th>status</th><th>bytes</th><th>latency ms</th><th>SQNR dB</th>"
        f"<th>build s</th><th></th></tr>{cells}</table>")


def _fmt(v: Any, spec: str) -> str:
    return spec.format(v) if isinstance(v, (int, float)) else ""


def _resolve(root: Path, spec: Any) -> str | None:
    if spec is None:
        return None
    s = str(spec)
    if s == "random" or (":" in s and not Path(root / s).exists() and not s.startswith("/")):
        return s  # a data spec, not a path
    return str((root / s).resolve())


def _unknown(table: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(table) - allowed)
    if extra:
        raise EdgecError(f"{where}: unknown key '{extra[0]}'", hint=", ".join(sorted(allowed)))


def iter_rows(rows: list[dict[str, Any]]) -> Iterator[tuple[str, ...]]:
    for r in rows:
        yield (r["model"], r["target"], r["status"], _fmt(r.get("bytes"), "{:,}"), _fmt(r.get("latency_ms"), "{:.3f}"),
               _fmt(r.get("sqnr_db"), "{:.1f}"), _fmt(r.get("seconds"), "{:.1f}"), r.get("error", ""))
