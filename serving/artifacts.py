"""Versioned, checksummed model artifacts laid out as MLServer model folders.

models/<model>/<version>/model.joblib         the fitted estimator (joblib)
models/<model>/<version>/model-settings.json  what MLServer reads: runtime, tensors
models/<model>/<version>/metadata.json        sha256, dataset, library versions, metrics, proof
models/<model>/<version>/model.onnx           the same model compiled (serving.compiled), when
                                              proven to answer like it; absent otherwise

Whoever can write models/ can rewrite all three files, so the sha256 an artifact is checked against
comes from the deployment spec, not from its folder: `model.artifacts` in the values file maps each
version to the sha256 of its model.joblib (`serving train --record-digests` records them; training
is deterministic). Launchers carry them to MLServer in the environment variable DIGESTS_ENV
(`serving serve`, `serving up`'s replicas, the chart's containers), and the runtime refuses an
artifact whose digest is missing or differs before anything unpickles it. metadata.json's sha256 is
still checked, as a second, informative check. A model-settings.json may only point at a file in
its own version folder.

The compiled model.onnx is bound the same way, under its own key `<version>/model.onnx` (its path
under the model's folder, so it can never be read as a version): the runtime loads it only when
the spec names its digest and the file has it; a compiled file the spec names no digest for is
ignored (scikit-learn serves), one whose digest differs is refused like a changed model.joblib.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
from collections.abc import Iterable, Mapping
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import BaseModel, Field

from .errors import ArtifactError, ChecksumMismatch, LibraryVersionMismatch

ARTIFACT_FILE = "model.joblib"
SETTINGS_FILE = "model-settings.json"
METADATA_FILE = "metadata.json"
COMPILED_FILE = "model.onnx"
RUNTIME = "serving.runtime.VerifiedSKLearnModel"
INPUT_NAME = "input-0"
PINNED_LIBRARIES = ("scikit-learn", "numpy", "joblib")
VERSION_FILES = (ARTIFACT_FILE, SETTINGS_FILE, METADATA_FILE, COMPILED_FILE)
"""Everything a version folder may hold (model.onnx only when the version is compiled)."""
WELLKNOWN_ARTIFACTS = ("model.joblib", "model.pickle", "model.pkl")
"""What MLServer looks for when parameters.uri names a folder (mlserver_sklearn)."""

DIGESTS_ENV = "SERVING_ARTIFACT_DIGESTS"
"""Environment variable carrying the expected digests to MLServer:
`v1=<sha256>,v1/model.onnx=<sha256>,v2=<sha256>`."""
DIGESTS_KEY = "model.artifacts"
"""Where the values file (the deployment spec) keeps them."""
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
RECORD_HINT = "serving train --record-digests charts/seldon-model/values.yaml"


class DigestMismatch(ArtifactError):
    def __init__(self, path: Path, version: str, expected: str, actual: str):
        super().__init__(
            f"refusing to load {path}: its sha256 is {actual} but the deployment spec expects "
            f"{expected} for version {version} ({DIGESTS_KEY}.{version} in the values file, "
            f"passed as {DIGESTS_ENV}). It is not the artifact the spec was reviewed with: "
            "restore it (re-run 'serving train': training is deterministic) or, if it was "
            f"retrained on purpose, record the new digests with '{RECORD_HINT}' and review that "
            "change."
        )


class MissingDigest(ArtifactError):
    def __init__(self, path: Path, version: str | None, why: str):
        super().__init__(
            f"refusing to load {path}: no expected sha256 for version {version}: {why}. "
            f"An artifact is unpickled only when the deployment spec names its digest: record "
            f"it under {DIGESTS_KEY}.{version} in the values file ('{RECORD_HINT}') and start "
            f"MLServer through 'serving serve', 'serving up' or the chart, which pass "
            f"{DIGESTS_ENV}={version}=<sha256>."
        )


class OutsideVersionFolder(ArtifactError):
    def __init__(self, settings_file: Path, field: str, value: str, target: str):
        super().__init__(
            f"refusing to load {settings_file}: {field} {value!r} resolves to {target}, outside "
            f"the version's own folder {settings_file.parent.resolve()}; a version serves only the "
            f"artifact in its folder. Set {field} to './{ARTIFACT_FILE}' (re-run 'serving train')."
        )


class ArtifactRecord(BaseModel):
    file: str
    sha256: str
    bytes: int


class ProofRecord(BaseModel):
    """How the compiled model was proven to answer like scikit-learn (serving.compiled)."""

    rows: dict[str, int] = Field(description="rows compared, by kind: dataset, perturbed, boundary")
    seed: int
    proba_tolerance: float = Field(description="largest absolute probability difference allowed")
    max_proba_difference: float | None = Field(default=None, description="the largest one seen")


class CompiledRecord(BaseModel):
    """The compiled form of a version: its file and proof, or why there is none."""

    file: str | None = Field(default=None, description="model.onnx; None when not compiled")
    sha256: str | None = None
    bytes: int | None = None
    input_type: str | None = Field(default=None, description="FP64 or FP32: what the rows are cast to")
    libraries: dict[str, str] = Field(description="skl2onnx, onnx, onnxruntime of the proof")
    proof: ProofRecord
    reason: str | None = Field(default=None, description="why the version is not compiled")


class DatasetRecord(BaseModel):
    name: str
    fingerprint: str = Field(description="sha256 of the train and hold-out arrays")
    n_train: int
    n_test: int
    features: list[str]
    classes: list[str]


class ModelMetadata(BaseModel):
    """metadata.json: everything needed to trust and reproduce one model version."""

    model: str
    version: str
    description: str
    estimator: str
    params: dict[str, Any]
    artifact: ArtifactRecord
    dataset: DatasetRecord
    libraries: dict[str, str] = Field(description="versions the artifact was pickled with")
    metrics: dict[str, float] = Field(description="hold-out metrics")
    compiled: CompiledRecord | None = Field(default=None, description="the compiled form (model.onnx)")


def compiled_key(version: str) -> str:
    """The key of a version's compiled file in model.artifacts / DIGESTS_ENV."""
    return f"{version}/{COMPILED_FILE}"


def spec_digests(metas: Iterable[ModelMetadata]) -> dict[str, str]:
    """What a deployment spec records for these versions: model.joblib's sha256 under the
    version, model.onnx's (when compiled) under <version>/model.onnx."""
    digests: dict[str, str] = {}
    for meta in metas:
        digests[meta.version] = meta.artifact.sha256
        if meta.compiled is not None and meta.compiled.sha256:
            digests[compiled_key(meta.version)] = meta.compiled.sha256
    return digests


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    versions = {name: installed_version(name) for name in PINNED_LIBRARIES}
    versions["python"] = platform.python_version()
    return versions


def model_settings(model: str, version: str, n_features: int, n_classes: int) -> dict[str, Any]:
    """The model-settings.json MLServer reads; tensors are declared so metadata names them."""
    return {
        "name": model,
        "implementation": RUNTIME,
        "parameters": {"uri": f"./{ARTIFACT_FILE}", "version": version},
        "inputs": [{"name": INPUT_NAME, "datatype": "FP64", "shape": [-1, n_features]}],
        "outputs": [
            {"name": "predict", "datatype": "INT64", "shape": [-1, 1]},
            {"name": "predict_proba", "datatype": "FP64", "shape": [-1, n_classes]},
        ],
    }


def write_json(path: Path, payload: Any) -> None:
    # sorted keys and a trailing newline: byte-identical output for identical content
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def read_metadata(version_dir: Path) -> ModelMetadata:
    path = version_dir / METADATA_FILE
    try:
        return ModelMetadata.model_validate_json(path.read_text())
    except FileNotFoundError as e:
        raise ArtifactError(
            f"{path} is missing: every artifact needs its metadata to be verified. "
            "Re-run 'serving train'."
        ) from e
    except ValueError as e:
        raise ArtifactError(f"{path} is not valid metadata: {e}") from e


def format_digests(digests: Mapping[str, str]) -> str:
    """The value of DIGESTS_ENV: `v1=<sha256>,v2=<sha256>` (sorted)."""
    return ",".join(f"{version}={digest}" for version, digest in sorted(digests.items()))


def parse_digests(text: str) -> dict[str, str]:
    digests: dict[str, str] = {}
    for entry in filter(None, (e.strip() for e in text.split(","))):
        version, sep, digest = entry.partition("=")
        if not sep or not version or not SHA256_RE.match(digest):
            raise ArtifactError(
                f"{DIGESTS_ENV} is malformed at {entry[:80]!r}: expected "
                "<version>=<64 lowercase hex digits>, comma-separated"
            )
        digests[version] = digest
    return digests


def digests_for(digests: Mapping[str, str], versions: Iterable[str]) -> dict[str, str]:
    """The entries of `digests` for these versions: model.joblib's and model.onnx's."""
    keys = [key for v in versions for key in (v, compiled_key(v))]
    return {key: digests[key] for key in keys if key in digests}


def digest_env(digests: Mapping[str, str], versions: Iterable[str] | None = None) -> dict[str, str]:
    """DIGESTS_ENV for a server of `versions` (all when None); {} when none is known, so the
    server inherits whatever its launcher's environment holds."""
    wanted = digests if versions is None else digests_for(digests, versions)
    return {DIGESTS_ENV: format_digests(wanted)} if wanted else {}


def expected_digest(
    version: str | None, artifact: Path, environ: Mapping[str, str] | None = None
) -> str:
    """The digest the spec expects for `version`, from DIGESTS_ENV (MissingDigest otherwise)."""
    environ = os.environ if environ is None else environ
    if not version:
        raise MissingDigest(artifact, version, "model-settings.json sets no parameters.version")
    text = environ.get(DIGESTS_ENV)
    if text is None:
        raise MissingDigest(artifact, version, f"{DIGESTS_ENV} is not set")
    digests = parse_digests(text)
    if version not in digests:
        known = ", ".join(sorted(digests)) or "none"
        raise MissingDigest(
            artifact, version, f"{DIGESTS_ENV} has no entry for {version} (it has: {known})"
        )
    return digests[version]


def compiled_digest(version: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The digest the spec expects for `version`'s model.onnx, None when it names none."""
    environ = os.environ if environ is None else environ
    return parse_digests(environ.get(DIGESTS_ENV) or "").get(compiled_key(version))


def verify_compiled(version_dir: Path, meta: ModelMetadata, expected: str | None) -> Path | str:
    """The compiled file to serve, checked against the spec's digest; or, as a string, why
    scikit-learn serves (not compiled, no digest in the spec, a library differs from the
    proof's). A compiled file whose digest differs from the spec's is refused (DigestMismatch)."""
    from importlib.metadata import PackageNotFoundError

    record = meta.compiled
    if record is None or record.file is None:
        return (record.reason if record and record.reason
                else "not compiled: metadata.json records no compiled form")
    path = version_dir / COMPILED_FILE
    if record.file != COMPILED_FILE or not path.is_file():
        return f"model.onnx not used: {path} is missing"
    if expected is None:
        return (f"model.onnx not used: the spec names no digest for it "
                f"({DIGESTS_KEY}.{compiled_key(meta.version)}; '{RECORD_HINT}')")
    actual = sha256_file(path)
    if actual != expected:
        raise DigestMismatch(path, compiled_key(meta.version), expected, actual)
    if actual != record.sha256:
        raise ChecksumMismatch(str(path), record.sha256 or "none", actual)
    try:
        installed = installed_version("onnxruntime")
    except PackageNotFoundError:
        return "model.onnx not used: onnxruntime is not installed"
    if record.libraries.get("onnxruntime") != installed:
        return (f"model.onnx not used: it was proven with onnxruntime {record.libraries.get('onnxruntime')}, "
                f"{installed} is installed (re-run 'serving train')")
    return path


def resolve_artifact(settings_file: Path, uri: str | None) -> Path:
    """The file `parameters.uri` names, as MLServer resolves it (relative to the settings file;
    a folder means a well-known file in it), refused unless it lies inside the version folder."""
    field = "parameters.uri"
    if not uri:
        raise ArtifactError(f"{settings_file}: {field} is missing; re-run 'serving train'.")
    parsed = urlparse(uri, scheme="file")
    if parsed.scheme != "file":
        raise OutsideVersionFolder(settings_file, field, uri, f"a {parsed.scheme}:// location")
    folder = settings_file.parent.resolve()
    path = Path(parsed.path)
    path = path if path.is_absolute() else settings_file.parent / path
    if path.is_dir():
        path = next((path / n for n in WELLKNOWN_ARTIFACTS if (path / n).is_file()), path)
    target = path.resolve()  # symlinks too: a link to a sibling's file is outside
    if not target.is_relative_to(folder) or target == folder:
        raise OutsideVersionFolder(settings_file, field, uri, str(target))
    if not target.is_file():
        raise ArtifactError(f"{target} is missing; re-run 'serving train'.")
    return target


def check_entries(version_dir: Path) -> None:
    """A version folder holds its three files and nothing else. MLServer puts a model's folder
    first on Python's import path while it imports the runtime (and its repository folder for
    good), so a module or package there (serving/, joblib.py, a .pth) would run as code before,
    or instead of, any check."""
    extra = sorted(p.name for p in version_dir.iterdir() if p.name not in VERSION_FILES)
    if extra:
        raise ArtifactError(
            f"refusing to serve {version_dir}: it holds {', '.join(extra)} besides "
            f"{', '.join(VERSION_FILES)}; MLServer imports Python modules from a model's folder, "
            "so anything else there could run as code. Remove it, or re-run 'serving train' into "
            "a clean folder."
        )


def check_settings(version_dir: Path) -> tuple[str, Path]:
    """Read <version_dir>/model-settings.json as MLServer would serve it: our runtime, a version,
    an artifact inside the folder, no environment from elsewhere. Returns the version it serves
    and the artifact's path."""
    settings_file = version_dir / SETTINGS_FILE
    check_entries(version_dir)
    try:
        settings = json.loads(settings_file.read_text())
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{settings_file} cannot be read: {e}; re-run 'serving train'.") from e
    if not isinstance(settings, dict):
        raise ArtifactError(f"{settings_file} is not a JSON object; re-run 'serving train'.")
    implementation = settings.get("implementation")
    if implementation != RUNTIME:
        raise ArtifactError(
            f"{settings_file}: implementation is {implementation!r}; our artifacts are served by "
            f"{RUNTIME}, which verifies them before unpickling. Re-run 'serving train'."
        )
    parameters = settings.get("parameters") or {}
    for key in ("environment_tarball", "environment_path"):
        if parameters.get(key):
            raise ArtifactError(
                f"{settings_file}: parameters.{key} is set; a model environment from outside "
                "the verified artifact runs unverified code. Remove it (re-run 'serving train')."
            )
    version = parameters.get("version")
    if not version or not isinstance(version, str):
        raise ArtifactError(f"{settings_file}: parameters.version is missing; re-run "
                            "'serving train'.")
    return version, resolve_artifact(settings_file, parameters.get("uri"))


def verify(
    version_dir: Path,
    expected_sha256: str | None,
    artifact: Path | None = None,
    version: str | None = None,
) -> ModelMetadata:
    """Check the artifact against the digest the deployment spec expects (and, second, against
    metadata.json) before anything unpickles it.

    joblib/pickle runs code while loading, so a changed file must never reach joblib.load. The
    expected digest comes from the spec, never from the folder: whoever rewrites the artifact can
    rewrite its metadata.json too.
    """
    meta = read_metadata(version_dir)
    version = version or meta.version
    artifact = artifact or version_dir / meta.artifact.file
    if not artifact.is_file():
        raise ArtifactError(f"{artifact} is missing; re-run 'serving train'.")
    if expected_sha256 is None:
        raise MissingDigest(artifact, version, f"the values file has no {DIGESTS_KEY}.{version}")
    actual = sha256_file(artifact)
    if actual != expected_sha256:
        raise DigestMismatch(artifact, version, expected_sha256, actual)
    if meta.version != version:
        raise ArtifactError(
            f"{version_dir / METADATA_FILE} describes version {meta.version} but the folder "
            f"serves {version}; re-run 'serving train'."
        )
    if actual != meta.artifact.sha256:
        raise ChecksumMismatch(str(artifact), meta.artifact.sha256, actual)
    installed = library_versions()
    for library in PINNED_LIBRARIES:
        recorded = meta.libraries.get(library)
        if recorded is not None and recorded != installed[library]:
            raise LibraryVersionMismatch(str(artifact), library, recorded, installed[library])
    return meta


def list_versions(root: Path) -> list[ModelMetadata]:
    """Every model version under root (models/<model>/<version>/metadata.json)."""
    return [
        ModelMetadata.model_validate_json(p.read_text())
        for p in sorted(root.glob(f"*/*/{METADATA_FILE}"))
    ]


def version_dir(root: Path, model: str, version: str) -> Path:
    """The folder of model/version under root, checked to be one MLServer may be started on
    (check_settings: our runtime, an artifact inside it, nothing else in it)."""
    path = root / model / version
    if not (path / SETTINGS_FILE).is_file():
        known = ", ".join(f"{m.model}/{m.version}" for m in list_versions(root)) or "none"
        raise ArtifactError(
            f"no model version {model}/{version} under {root} (known: {known}); "
            "run 'make models' or 'serving train'."
        )
    check_settings(path)
    return path


def check_version(version_dir: Path, digests: Mapping[str, str]) -> ModelMetadata:
    """Everything the runtime checks before unpickling, against the spec's `digests`."""
    version, artifact = check_settings(version_dir)
    return verify(version_dir, digests.get(version), artifact, version)


def record_digests(values_path: Path, digests: Mapping[str, str]) -> dict[str, str]:
    """Write `digests` into the values file's model.artifacts (other versions kept), editing the
    text so its comments and layout stay. Returns the mapping now recorded."""
    import yaml

    text = values_path.read_text()
    lines = text.splitlines()
    current = ((yaml.safe_load(text) or {}).get("model") or {}).get("artifacts") or {}
    retrained = {key for key in digests if "/" not in key}  # a version no longer compiled:
    stale = {compiled_key(v) for v in retrained} - set(digests)  # its old model.onnx key goes
    merged = {k: d for k, d in {**current, **digests}.items() if k not in stale}
    try:
        start = lines.index("model:")
    except ValueError:
        raise ArtifactError(
            f"{values_path} has no block 'model:' section; add {DIGESTS_KEY} by hand: "
            + ", ".join(f"{v}: {d}" for v, d in sorted(merged.items()))
        ) from None
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or lines[end].startswith(" ")):
        end += 1
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1
    # quoted: a digest of digits and one 'e' would otherwise read as a number
    block = ["  artifacts:"] + [
        f'    {v if re.match(r"^[A-Za-z][A-Za-z0-9._-]*$", v) else json.dumps(v)}: "{d}"'
        for v, d in sorted(merged.items())
    ]
    section = lines[start + 1:end]
    at = next((i for i, ln in enumerate(section) if ln.startswith("  artifacts:")), None)
    if at is None:
        comment = (f"  ## @param {DIGESTS_KEY} sha256 of each version's model.joblib (and of its "
                   "compiled <version>/model.onnx); the runtime refuses an artifact whose digest "
                   f"is missing or differs (recorded by '{RECORD_HINT}')")
        section += [comment] + block
    else:
        stop = at + 1
        while stop < len(section) and section[stop].startswith("    "):
            stop += 1
        section[at:stop] = block
    out = "\n".join(lines[: start + 1] + section + lines[end:]) + "\n"
    recorded = ((yaml.safe_load(out) or {}).get("model") or {}).get("artifacts")
    if recorded != merged:
        raise ArtifactError(f"could not record the digests in {values_path}; add them by hand")
    values_path.write_text(out)
    return merged


def load_verified_predictor(version_dir: Path, digests: Mapping[str, str]) -> tuple[ModelMetadata, Any]:
    """Like load_verified, but returns a serving.compiled predictor: the compiled model when
    the version has one the spec's digests bind (and proven with the installed onnxruntime),
    else scikit-learn's. Its `kind` says which; its `reason` why scikit-learn serves."""
    from .compiled import OnnxPredictor, SklearnPredictor

    meta, estimator = load_verified(version_dir, digests)
    compiled = verify_compiled(version_dir, meta, digests.get(compiled_key(meta.version)))
    if isinstance(compiled, Path) and meta.compiled and meta.compiled.input_type:
        return meta, OnnxPredictor(compiled, meta.compiled.input_type)
    predictor = SklearnPredictor(estimator)
    predictor.reason = str(compiled)
    return meta, predictor


def load_verified(version_dir: Path, digests: Mapping[str, str]) -> tuple[ModelMetadata, Any]:
    """The model of `version_dir`, loaded only after every check the runtime makes
    (check_version, against the spec's `digests`): for callers outside MLServer, such as batch
    scoring in-process. Returns the metadata and the estimator."""
    import joblib  # here, not at the top: the CLI imports this module and should start fast

    meta = check_version(version_dir, digests)
    _, artifact = check_settings(version_dir)
    return meta, joblib.load(artifact)
