"""`python -m services.story_worker`: consume story tasks and drive the OpenAI model."""

from common.service import run_service
from services.story_worker.service import main

if __name__ == "__main__":
    run_service("story_worker", main)
