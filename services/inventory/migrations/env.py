from libs.db.alembic_env import run
from services.inventory.orm import metadata

run(metadata)
