"""The image map: what an image name means on this machine, and a container's command.

A container image bundles an ENTRYPOINT, a CMD, a working dir, files at fixed paths and
some environment. The lab has no images, so a small YAML file says, per image name
(registry prefix and tag stripped), what to run locally instead:

    images:
      calc:
        entrypoint: []                # the image's ENTRYPOINT
        cmd: [calc, serve]            # the image's CMD
        workdir: ..                   # local working dir, relative to this file
        paths: {/app/start.sh: start.sh}   # image path -> local file, relative to this file
        env: {CALC_HOST: $(POD_IP), PATH: $(LAB_BIN):$(PATH)}
      api: {venv: ~/src/api/.venv, workdir: ~/src/api}   # a service in its own virtualenv

`venv` is a virtualenv whose `bin` goes first on the container's PATH (and VIRTUAL_ENV
names it), so the image's `uvicorn` or `gunicorn` is the service's own, at its own
versions; `workdir` and `venv` may be absolute, start with `~`, or be relative to this
file. `env` values, and `entrypoint` and `cmd` (which stand in for the image's, so they may
bind $(POD_IP) where the image binds 0.0.0.0; they also see the entry's env), may use
$(POD_IP), $(POD_NAME), $(POD_DIR) (a directory of the pod's own,
like an emptyDir, for files the image writes to /tmp), $(LAB_BIN) (the directory of the
Python running the lab, i.e. the venv's bin) and $(PATH) (the lab's own PATH).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# The kubelet's env and argv rules, one copy for both runtimes (expand: re-exported).
from lab.container_env import command_and_args, manifest_env
from lab.container_env import expand as expand
from lab.manifest import Container, ManifestError, quoted, read_yaml, shortened
from lab.manifest import image_name as image_name  # re-exported: the image map names images so


@dataclass(frozen=True)
class Image:
    name: str
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    workdir: Path | None = None
    paths: dict[str, Path] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    venv: Path | None = None  # a virtualenv: its bin first on PATH, VIRTUAL_ENV set


KEYS = ("entrypoint", "cmd", "workdir", "venv", "paths", "env")


def _local_dir(base: Path, text: str) -> Path:
    """A directory the image map names: absolute, `~`-relative, or relative to the map."""
    return (base / Path(text).expanduser()).resolve()


class ImageMap:
    def __init__(self, images: dict[str, Image], source: Path | None = None) -> None:
        self.images = images
        self.source = source

    @classmethod
    def load(cls, path: Path) -> ImageMap:
        where = str(path)
        documents = read_yaml(path, "an image map")
        if len(documents) > 1:
            raise ManifestError(
                f"{where}: holds {len(documents)} YAML documents; an image map is one"
            )
        data = documents[0] if documents else None
        if not isinstance(data, dict) or not isinstance(data.get("images"), dict):
            raise ManifestError(f"{where}: images: must be a mapping of image name to entry")
        base = path.resolve().parent
        images: dict[str, Image] = {}
        for name, entry in data["images"].items():
            at = f"{where}: images.{shortened(str(name))}"
            if not isinstance(entry, dict):
                raise ManifestError(f"{at}: must be a mapping, got {quoted(entry)}")
            unknown = set(entry) - set(KEYS)
            if unknown:
                raise ManifestError(
                    f"{at}.{shortened(str(sorted(map(str, unknown))[0]))}: unknown key"
                )
            lists: dict[str, tuple[str, ...]] = {}
            for key in ("entrypoint", "cmd"):
                value = entry.get(key) or []
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise ManifestError(
                        f"{at}.{key}: must be a list of strings, got {quoted(value)}"
                    )
                lists[key] = tuple(value)
            maps: dict[str, dict[str, str]] = {}
            for key in ("paths", "env"):
                value = entry.get(key) or {}
                if not isinstance(value, dict):
                    raise ManifestError(f"{at}.{key}: must be a mapping, got {quoted(value)}")
                for k, v in value.items():
                    # A value is a string or a number, never a list or mapping turned
                    # into its repr.
                    if isinstance(v, list | dict):
                        raise ManifestError(
                            f"{at}.{key}.{shortened(str(k))}: must be a string, got {quoted(v)}"
                        )
                maps[key] = {str(k): str(v) for k, v in value.items()}
            dirs: dict[str, Path | None] = {}
            for key in ("workdir", "venv"):
                value = entry.get(key)
                if value is not None and not isinstance(value, str):
                    raise ManifestError(f"{at}.{key}: must be a string, got {quoted(value)}")
                dirs[key] = _local_dir(base, value) if value is not None else None
            venv = dirs["venv"]
            if venv is not None and not (venv / "bin").is_dir():
                raise ManifestError(
                    f"{at}.venv: {quoted(str(venv))} is not a virtualenv (no bin/ in it)"
                )
            images[str(name)] = Image(
                name=str(name),
                entrypoint=lists["entrypoint"],
                cmd=lists["cmd"],
                workdir=dirs["workdir"],
                paths={k: (base / v).resolve() for k, v in maps["paths"].items()},
                env=maps["env"],
                venv=venv,
            )
        return cls(images, path)

    def image(self, reference: str) -> Image:
        name = image_name(reference)
        if name not in self.images:
            where = self.source.resolve() if self.source is not None else "the image map"
            key = f"images.{name}" if name.isidentifier() else f"images.{quoted(name)}"
            known = ", ".join(sorted(self.images)) or "none yet"
            raise ManifestError(
                f"spec.template.spec.containers[0].image: {quoted(reference)} is not in the "
                f"image map {where}: add the key {key} to it (keys are image names without "
                f"registry and tag; it has: {known}), e.g. for a service in its own "
                f"virtualenv the line `  {shortened(name)}: {{venv: /path/to/.venv, workdir: "
                "/path/to/code}` under `images:`; or pass --image-map with a map that has it"
            )
        return self.images[name]


@dataclass(frozen=True)
class Launch:
    """What to run for one container of one pod."""

    argv: tuple[str, ...]
    env: dict[str, str]
    cwd: Path | None
    mounts: dict[str, Path] = field(default_factory=dict)  # mountPath -> the pod's dir


def mount_volumes(container: Container, pod_dir: Path) -> dict[str, Path]:
    """Each mounted volume as a directory of the pod's own, `<pod_dir>/volumes/<name>`:
    kept across container restarts (the pod dir is), filled with a configMap's or
    secret's files the first time. Returns mountPath -> directory."""
    mounts: dict[str, Path] = {}
    for mount in container.mounts:
        local = pod_dir / "volumes" / mount.volume
        local.mkdir(parents=True, exist_ok=True)
        for relative, content in mount.files:
            target = local / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
            if mount.mode is not None:
                target.chmod(mount.mode)
        mounts[mount.path] = local
    return mounts


def mounted(value: str, mounts: Mapping[str, Path]) -> str:
    """A path under a mountPath -> the same path under the pod's directory for it; the
    longest mountPath wins, as the innermost mount would in a container."""
    for path in sorted(mounts, key=len, reverse=True):
        if value == path or value.startswith(path + "/"):
            return str(mounts[path]) + value[len(path) :]
    return value


def lab_variables(
    pod_name: str, pod_ip: str, base_env: Mapping[str, str], pod_dir: Path | None = None
) -> dict[str, str]:
    return {
        "POD_NAME": pod_name,
        "POD_IP": pod_ip,
        "POD_DIR": str(pod_dir) if pod_dir is not None else "/tmp",
        "LAB_BIN": str(Path(sys.executable).parent),
        "PATH": base_env.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
    }


def container_env(
    container: Container,
    image: Image,
    pod_name: str,
    pod_ip: str,
    base_env: Mapping[str, str],
    rewrite: Callable[[str], str] | None = None,
    pod_dir: Path | None = None,
) -> dict[str, str]:
    """The container's environment: a minimal base, the image's env, then the manifest's
    env by the kubelet's rules (lab.container_env.manifest_env), then HOSTNAME. `rewrite`
    edits the manifest's values (the lab points the in-cluster `influxdb:8086` at its own
    InfluxDB)."""
    lab_vars = lab_variables(pod_name, pod_ip, base_env, pod_dir)
    env: dict[str, str] = {"PATH": lab_vars["PATH"]}
    for key in ("HOME", "LANG", "LC_ALL", "TMPDIR", "TZ"):
        if key in base_env:
            env[key] = base_env[key]
    for key, value in image.env.items():
        env[key] = expand(value, lab_vars)
    if image.venv is not None:
        # As `activate` does: the service's own interpreter and tools come first.
        env["VIRTUAL_ENV"] = str(image.venv)
        env["PATH"] = f"{image.venv / 'bin'}:{env['PATH']}"
    env.update(manifest_env(container, pod_name, pod_ip, rewrite))
    env["HOSTNAME"] = pod_name
    return env


def container_argv(
    container: Container,
    image: Image,
    env: Mapping[str, str],
    image_env: Mapping[str, str] | None = None,
) -> tuple[str, ...]:
    """`command` replaces the ENTRYPOINT and drops the CMD; `args` replaces the CMD. Their
    `$(VAR)` references expand against `env`, the container's env list from its manifest
    (lab.container_env), not the image's; image paths map to local files.

    The image map's own `entrypoint` and `cmd` stand in for the image's, which in a
    container would bind 0.0.0.0 and a fixed port: here pods share the machine's
    addresses, so those (and only those) expand against `image_env`, the container's
    whole environment ($(POD_IP), the image map's env)."""
    command, args = command_and_args(container, env)
    own = image_env or {}
    if command is not None:
        argv: Sequence[str] = list(command) + list(args or ())
    elif args is not None:
        argv = [expand(a, own) for a in image.entrypoint] + list(args)
    else:
        argv = [expand(a, own) for a in (*image.entrypoint, *image.cmd)]
    if not argv:
        raise ManifestError(
            f"spec.template.spec.containers[0]: image {image.name!r} has no entrypoint or cmd "
            "in the image map and the container sets no command"
        )
    return tuple(str(image.paths[a]) if a in image.paths else a for a in argv)


def resolve(
    container: Container,
    image: Image,
    pod_name: str,
    pod_ip: str,
    base_env: Mapping[str, str],
    rewrite: Callable[[str], str] | None = None,
    pod_dir: Path | None = None,
) -> Launch:
    mounts = mount_volumes(container, pod_dir) if pod_dir is not None else {}
    env = container_env(container, image, pod_name, pod_ip, base_env, rewrite, pod_dir)
    # The manifest's values that name a path under a mount: the pod's directory for it.
    manifest_vars = {var.name for var in container.env}
    env = {k: mounted(v, mounts) if k in manifest_vars else v for k, v in env.items()}
    declared = {k: v for k, v in env.items() if k in manifest_vars}
    argv = tuple(mounted(a, mounts) for a in container_argv(container, image, declared, env))
    cwd = image.workdir
    if container.working_dir is not None:
        mapped = image.paths.get(container.working_dir)
        if mapped is None and mounted(container.working_dir, mounts) != container.working_dir:
            mapped = Path(mounted(container.working_dir, mounts))
        cwd = mapped if mapped is not None else cwd
    return Launch(argv, env, cwd, mounts)


def map_command(
    command: Sequence[str], image: Image, mounts: Mapping[str, Path] | None = None
) -> tuple[str, ...]:
    """An exec probe's or hook's command: no shell and no `$(VAR)` expansion (the
    kubelet runs exec handlers as written), image paths mapped to local files, paths
    under a mount to the pod's directory for it."""
    return tuple(
        str(image.paths[a]) if a in image.paths else mounted(a, mounts or {}) for a in command
    )


def _findable(program: str, env: Mapping[str, str], cwd: Path | None) -> bool:
    if "/" in program:
        path = Path(program) if program.startswith("/") or cwd is None else cwd / program
        return path.is_file() and os.access(path, os.X_OK)
    return shutil.which(program, path=env.get("PATH", "")) is not None


def unresolved(
    container: Container, image: Image, launch: Launch, source: Path | None
) -> list[str]:
    """Programs the container would run that this machine does not have: its command and
    every exec probe and hook, after the image map's paths. A cluster would run them
    inside the image; here each must be mapped to a local file (or be on the PATH), so
    the message says how."""
    where = "spec.template.spec.containers[0]"
    commands: list[tuple[str, tuple[str, ...]]] = [("command", launch.argv)]
    for key, probe in (
        ("readinessProbe", container.readiness),
        ("livenessProbe", container.liveness),
        ("startupProbe", container.startup),
    ):
        if probe is not None and probe.action == "exec":
            commands.append(
                (f"{key}.exec.command", map_command(probe.command, image, launch.mounts))
            )
    for key, handler in (
        ("lifecycle.preStop", container.pre_stop),
        ("lifecycle.postStart", container.post_start),
    ):
        if handler is not None and handler.action == "exec":
            commands.append(
                (f"{key}.exec.command", map_command(handler.command, image, launch.mounts))
            )
    problems = []
    if (
        container.working_dir is not None
        and container.working_dir not in image.paths
        and mounted(container.working_dir, launch.mounts) == container.working_dir
    ):
        # Without a mapping the container would run in the image map's workdir, not the
        # one the manifest names: say so rather than run somewhere else.
        problems.append(
            f"{where}.workingDir: {container.working_dir!r} is a directory inside image "
            f"{image.name!r}; map it in {source or 'the image map'} under "
            f"images.{image.name}.paths (e.g. `{container.working_dir}: ./app`)"
        )
    for key, argv in commands:
        program = argv[0]
        if _findable(program, launch.env, launch.cwd):
            continue
        if program.startswith("/"):
            how = (
                f"map it to a local file in {source or 'the image map'} under "
                f"images.{image.name}.paths (e.g. `{program}: ./stand-ins/"
                f"{Path(program).name}`)"
            )
        else:
            how = (
                f"put it on the container's PATH (images.{image.name}.env PATH in "
                f"{source or 'the image map'}) or map it under images.{image.name}.paths"
            )
        problems.append(
            f"{where}.{key}: {program!r} from image {image.name!r} is not on this machine; {how}"
        )
    return problems


def image_paths(container: Container, image: Image, launch: Launch) -> list[str]:
    """Arguments and env values of the manifest that look like files inside the image
    (an absolute path of two or more parts) and exist neither here nor through the image
    map or a mount. Not refused, since a URL path looks the same, but named before start
    with how to map one."""
    where = "spec.template.spec.containers[0]"
    # Which manifest field each argv element came from (the image map's own: none).
    fields: list[str | None]
    if container.command is not None:
        fields = [f"command[{i}]" for i in range(len(container.command))]
        fields += [f"args[{i}]" for i in range(len(container.args or ()))]
    elif container.args is not None:
        fields = [None] * len(image.entrypoint) + [f"args[{i}]" for i in range(len(container.args))]
    else:
        fields = []
    values = [
        (key, a)
        for i, (key, a) in enumerate(zip(fields, launch.argv, strict=False))
        if i > 0 and key
    ]
    mine = {var.name for var in container.env}
    values += [(f"env {k}", v) for k, v in launch.env.items() if k in mine]
    notes = []
    for key, value in values:
        parts = Path(value).parts
        if not value.startswith("/") or len(parts) < 3 or Path(value).exists():
            continue
        if any(value == str(p) or value.startswith(str(p) + "/") for p in image.paths.values()):
            continue
        notes.append(
            f"{where}.{key}: {value!r} is not on this machine; if it is a file inside image "
            f"{image.name!r}, map it under images.{image.name}.paths"
        )
    return notes
