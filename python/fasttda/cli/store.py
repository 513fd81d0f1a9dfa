"""``fasttda store info|verify PATH...``: inspect feature stores and check them byte for byte."""
from __future__ import annotations

import json
import sys

import click


@click.group("store")
def store():
    """Inspect and verify feature stores."""


@store.command("info")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the manifests as JSON.")
def info(paths, as_json):
    """Rows, format, shards, spec and fingerprint of each store (cheap size checks only)."""
    from fasttda.store import FeatureStore

    stores = [FeatureStore.open(p) for p in paths]
    if as_json:
        click.echo(json.dumps({str(s.path): s.manifest for s in stores}, indent=1, sort_keys=True))
        return
    for s in stores:
        m = s.manifest
        nbytes = sum(f["bytes"] for e in m["shards"] for f in e["files"].values())
        fp = m["fingerprint"] or {}
        click.echo(f"{s.path}: {len(s)} rows x {s.dim} {s.fmt}, {len(m['shards'])} shard(s), {nbytes / 2**20:.1f} MiB, "
                   f"ids {m['id_kind']}, {m['commits']} commit(s), updated {m['updated']}")
        click.echo(f"  spec: {json.dumps(m['spec'], sort_keys=True)}")
        click.echo(f"  model: {fp.get('name')} sha256={fp.get('sha256')}")


@store.command("verify")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--compatible", is_flag=True, help="Also require the stores to share dim, spec and fingerprint.")
def verify(paths, compatible):
    """Re-hash every committed byte (SHA-256) and check stored values; exit 1 on any problem."""
    from fasttda.cli._common import error_line
    from fasttda.store import FeatureStore, IncompatibleStoresError, StoreError, check_compatible

    failed, stores = False, []
    for p in paths:
        try:
            s = FeatureStore.open(p, verify="none")
            summary = s.verify()
            stores.append(s)
            click.echo(f"ok {p}: {summary['rows']} rows, {summary['shards']} shard(s), {summary['bytes']} bytes")
        except (StoreError, OSError) as exc:
            failed = True
            click.echo(f"FAILED {p}: {error_line(exc)}", err=True)
    if compatible and len(stores) > 1:
        try:
            check_compatible(stores)
            click.echo("compatible: same dim, spec and fingerprint")
        except IncompatibleStoresError as exc:
            failed = True
            click.echo(f"FAILED {error_line(exc)}", err=True)
    sys.exit(1 if failed else 0)
