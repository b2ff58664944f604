from libs.db.alembic_env import run
from services.metrics.orm import metadata

run(metadata)
