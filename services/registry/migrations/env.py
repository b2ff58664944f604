from libs.db.alembic_env import run
from services.registry.orm import metadata

run(metadata)
