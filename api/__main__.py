"""``python -m cloudland_api``: migrate, bootstrap the first admin, serve with uvicorn."""

from __future__ import annotations

import logging
import sys

import uvicorn
from sqlalchemy.exc import OperationalError

from cloudland.errors import ConfigError
from cloudland_api.app import create_app
from cloudland_api.db import upgrade
from cloudland_api.security import ADMIN_CREDENTIALS_FILE, bootstrap_admin
from cloudland_api.settings import ApiSettings


def main() -> int:
    """Start the control plane from ``CLOUDLAND_API_*`` settings; 2 on a bad setting."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = ApiSettings.from_env()
    except ConfigError as exc:
        print(f"cloudland-api: {exc}", file=sys.stderr)
        return 2
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
    credentials = settings.state_dir / ADMIN_CREDENTIALS_FILE
    # The path only: the password stays in the 0600 file, out of terminals and logs.
    if created:
        print(f"created user 'admin'; its password is in {credentials}")
    elif credentials.exists():
        print(f"admin credentials (from the first start) are in {credentials}")
    print(f"CloudLand API on http://{settings.host}:{settings.port}  (docs: http://{settings.host}:{settings.port}/docs)")
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
