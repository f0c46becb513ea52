"""Input checks every job runs before it starts Ray or a server (README "Jobs validate inputs").

Each check raises :class:`mella.console.UsageError` with one line naming the problem and the fix; none
creates a file or a directory. URL syntax: RFC 3986 via ``yarl`` (the URL library aiohttp uses).
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

from yarl import URL

from mella.console import UsageError


def check_url(url: str, what: str = "URL") -> str:
    """``url`` is an absolute http(s) URL with a host and no whitespace; returns it.

    Raises:
        UsageError: otherwise.
    """
    bad = any(c.isspace() for c in url)
    try:
        u = URL(url)
    except (ValueError, TypeError):
        bad = True
    else:
        bad = bad or u.scheme not in ("http", "https") or not u.host
    if bad:
        raise UsageError(f"{what} {url!r} is not a valid http(s) URL: write it as http://host/path")
    return url


def check_seeds(path: str, base_url: str | None = None) -> int:
    """The seeds file exists, parses (:func:`mella.crawl.read_seeds`) and every seed is a valid URL.

    Returns the number of seeds. Raises :class:`UsageError`.
    """
    from mella.crawl import read_seeds

    p = Path(path)
    if not p.is_file():
        raise UsageError(
            f"seeds file {path} does not exist: give --seeds FILE (URLs one a line, or YAML {{lang: [urls]}})"
        )
    if base_url is not None:
        check_url(base_url, "--base-url")
    try:
        seeds = read_seeds(str(p), base_url)
    except (ValueError, UnicodeDecodeError, OSError, AttributeError, TypeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UsageError(f"seeds file {path}: {msg}") from e
    except Exception as e:  # yaml.YAMLError and friends
        raise UsageError(f"seeds file {path} does not parse: {type(e).__name__}: {str(e).splitlines()[0]}") from e
    if not seeds:
        raise UsageError(f"seeds file {path} holds no URL: add one URL a line")
    for s in seeds:
        check_url(s.url, f"seed in {path}:")
    return len(seeds)


def check_seed_hosts(path: str, base_url: str | None, allow_private_hosts: list[str]) -> None:
    """The SSRF guard lets at least one seed of a valid seeds file (:func:`check_seeds` first) through
    (:func:`check_seed_addresses`). Raises :class:`UsageError`."""
    from mella.crawl import read_seeds

    check_seed_addresses([s.url for s in read_seeds(path, base_url)], allow_private_hosts, f"seeds file {path}")


#: seconds preflight waits for the DNS answers of the seed hosts, all together (no answer: not refused)
SEED_DNS_TIMEOUT_S = 3.0


def _host_addresses(hosts: list[str], timeout_s: float) -> dict[str, list[str]]:
    """IP addresses of each host (an IP literal is its own; DNS via ``getaddrinfo`` in threads, at most
    ``timeout_s`` for all); a host without an answer in time, or that does not resolve, maps to ``[]``."""
    import ipaddress
    from concurrent.futures import ThreadPoolExecutor, wait

    out: dict[str, list[str]] = {}
    names = []
    for h in hosts:
        try:
            out[h] = [str(ipaddress.ip_address(h.strip("[]")))]
        except ValueError:
            names.append(h)
    if not names:
        return out
    pool = ThreadPoolExecutor(max_workers=min(16, len(names)))
    futs = {pool.submit(socket.getaddrinfo, h, None): h for h in names}
    wait(futs, timeout=timeout_s)
    for f, h in futs.items():
        try:
            out[h] = sorted({i[4][0] for i in f.result(timeout=0)}) if f.done() else []
        except OSError:
            out[h] = []
    pool.shutdown(wait=False, cancel_futures=True)
    return out


def check_seed_addresses(urls: list[str], allow_private_hosts: list[str], what: str = "seeds") -> None:
    """Raise :class:`UsageError` when the SSRF guard would refuse every seed: each seed's host resolves only
    to private, loopback, link-local or reserved addresses not covered by ``allow_private_hosts`` (the
    job would fetch nothing and end with 0 pairs). A host that does not resolve here counts as allowed
    (the crawl reports its failure)."""
    from mella.net import AddressPolicy

    policy = AddressPolicy(allow_private_hosts)
    hosts = sorted({URL(u).host or "" for u in urls} - {""})
    addrs = _host_addresses(hosts, SEED_DNS_TIMEOUT_S)
    refused = [h for h in hosts if addrs.get(h) and not any(policy.permits(a) for a in addrs[h])]
    if hosts and len(refused) == len(hosts):
        shown = ", ".join(refused[:3]) + (f" and {len(refused) - 3} more" if len(refused) > 3 else "")
        raise UsageError(
            f"every seed host in {what} is a private, loopback or link-local address ({shown}), which the "
            "SSRF guard refuses: pass --allow-private-hosts (all) or --allow-private-hosts CIDR,... to crawl it"
        )


def check_warcs(patterns: list[str]) -> list[str]:
    """Every ``--warc`` path/glob matches ``.warc``/``.warc.gz`` files; returns them. Raises :class:`UsageError`."""
    from mella.warc import expand_warc_paths

    try:
        return expand_warc_paths(patterns)
    except FileNotFoundError as e:
        raise UsageError(f"{e}: check the path (quote globs: --warc 'dir/*.warc.gz')") from e


def check_langs(langs: list[str]) -> list[str]:
    """Every code is configured (``languages.yaml`` or a file named by ``$MELLA_LANGUAGES``). Raises :class:`UsageError`."""
    from mella.languages import ENV_VAR, load_languages

    known = load_languages()
    bad = [x for x in langs if x not in known]
    if bad:
        raise UsageError(
            f"unknown language(s) {','.join(bad)}: use one of {','.join(sorted(known))}, "
            f"or add one in a file named by ${ENV_VAR} (README: Add a language)"
        )
    return langs


#: Files that hold a checkpoint's weights (transformers' ``save_pretrained``: safetensors, or PyTorch
#: pickles for older checkpoints; a sharded checkpoint has an index file naming its shards).
WEIGHT_GLOBS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")


def check_model(name: str | Path, flag: str) -> tuple[str, dict]:
    """Resolve ``name`` (a local directory or a hub id ``org/name[@rev]``, :func:`mella.models.hub.resolve_model`)
    and check the checkpoint (:func:`check_model_dir`). Returns ``(absolute local path, parsed config.json)``:
    jobs hand that path to their Ray workers, so every worker loads the very files checked here.

    Raises:
        UsageError: one line — see :func:`mella.models.hub.resolve_model` and :func:`check_model_dir`.
    """
    from mella.models.hub import resolve_model

    path = resolve_model(name, flag=flag)
    return str(path), check_model_dir(path, flag)


def check_model_dir(path: str | Path, flag: str) -> dict:
    """``path`` is a local Hugging Face checkpoint directory: it exists, holds a parseable config.json
    and weights (:data:`WEIGHT_GLOBS`).

    Returns the parsed config. Raises :class:`UsageError`, one line naming the fix. Hub ids are resolved
    by :func:`check_model` first.
    """
    p = Path(path)
    hint = (
        "give a local checkpoint directory or a hub id (python jobs/make_tiny_model.py --output DIR makes a tiny one)"
    )
    if not p.exists():
        raise UsageError(f"{flag} {path} does not exist: {hint}")
    if not p.is_dir() or not (p / "config.json").is_file():
        raise UsageError(f"{flag} {path} holds no config.json: {hint}")
    try:
        cfg = json.loads((p / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UsageError(
            f"{flag} {path}/config.json does not parse ({e}): re-download or re-save the checkpoint"
        ) from e
    if not any(f.is_file() for g in WEIGHT_GLOBS for f in p.glob(g)):
        raise UsageError(
            f"{flag} {path} has a config.json but no weights (*.safetensors, *.bin or their index .json): "
            "download the whole checkpoint, or save it with save_pretrained(DIR)"
        )
    return cfg


def check_output(path: str | Path, flag: str = "--output") -> None:
    """``path`` is not an existing file and its nearest existing parent is a directory. Raises :class:`UsageError`."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{flag} {path} is a file: give a directory")
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{flag} {path}: {parent} is not a directory")


def check_port_free(port: int, flag: str) -> None:
    """TCP ``port`` can be bound on 127.0.0.1 now. Raises :class:`UsageError` naming ``flag``."""
    if port == 0:
        return
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            raise UsageError(f"port {port} on 127.0.0.1 is busy ({e.strerror}): pass {flag} N with a free port") from e
