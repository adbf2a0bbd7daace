"""``python -m cloudland_api``: migrate, bootstrap the first admin, serve with uvicorn."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence

import uvicorn
from sqlalchemy.exc import OperationalError

from cloudland.errors import ConfigError
from cloudland.statedir import make_private
from cloudland_api import logs
from cloudland_api.app import create_app
from cloudland_api.db import upgrade
from cloudland_api.security import ADMIN_CREDENTIALS_FILE, bootstrap_admin
from cloudland_api.services.networks import make_default_network
from cloudland_api.services.routers import make_default_external
from cloudland_api.settings import PREFIX, ApiSettings


def parse_args(argv: Sequence[str] | None) -> None:
    """``--help`` lists the settings (each a ``CLOUDLAND_API_*`` variable) and exits; the API takes
    no arguments, so anything else is a usage error (exit 2), not a second API on the same database."""
    fields = "\n".join(f"  {PREFIX}{f.name.upper():<24} default: {getattr(ApiSettings(), f.name)}"
                       for f in dataclasses.fields(ApiSettings))
    parser = argparse.ArgumentParser(
        prog="python -m cloudland_api", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="The CloudLand REST API: migrate the database, create the first admin, serve.",
        epilog=f"Settings, from the environment:\n{fields}")
    parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Start the control plane from ``CLOUDLAND_API_*`` settings; 2 on a bad setting."""
    parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = ApiSettings.from_env()
    except ConfigError as exc:
        print(f"cloudland-api: {exc}", file=sys.stderr)
        return 2
    # Private state (issue 15): the database, keys and credentials we make are 0600 in a 0700
    # directory. The API does not know the driver, so it keeps the search bit the root gave
    # the directory for QEMU (cloudland/statedir.py).
    make_private(settings.state_dir, qemu=None)
    try:
        upgrade(settings.database_url)
        app = create_app(settings)
    except OperationalError as exc:
        # The driver's own message (host, reason), not SQLAlchemy's, which would repeat the SQL.
        print(f"cloudland-api: cannot open the database (CLOUDLAND_API_DATABASE_URL): {exc.orig}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"cloudland-api: {exc}", file=sys.stderr)
        return 2
    with app.state.sessions() as session:
        created = bootstrap_admin(session, settings.state_dir)
        if created and settings.default_network:
            default = make_default_network(session, created.org_id, settings)
            print(f"created network 'default' ({default.cidr}, VNI {default.vni}): VMs created without --network "
                  "get a NIC on it")
        made = make_default_external(session, settings)
        if made is not None:
            external, router = made
            print(f"created external network '{external.name}' ({external.cidr}, next hop {external.gateway}, "
                  f"bridge {external.bridge})" + (f" and router '{router.name}' of the default network, its gateway "
                                                  "there" if router else ""))
    credentials = settings.state_dir / ADMIN_CREDENTIALS_FILE
    # The path only: the password stays in the 0600 file, out of terminals and logs.
    if created:
        print(f"created user 'admin'; its password is in {credentials}")
    elif credentials.exists():
        print(f"admin credentials (from the first start) are in {credentials}")
    print(f"CloudLand API on http://{settings.host}:{settings.port}  (docs: http://{settings.host}:{settings.port}/docs)")
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="info")  # sets up logging
    logs.install()  # then no token or ticket in a URL reaches api.out (issue 15)
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
