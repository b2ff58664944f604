from libs.db.alembic_env import run
from services.scheduler.orm import metadata

run(metadata)
