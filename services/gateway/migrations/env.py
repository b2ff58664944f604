from libs.db.alembic_env import run
from services.gateway.orm import metadata

run(metadata)
