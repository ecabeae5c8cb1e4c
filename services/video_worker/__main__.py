"""`python -m services.video_worker`: consume video segments and drive fal.ai."""

from common.service import run_service
from services.video_worker.service import main

if __name__ == "__main__":
    run_service("video_worker", main)
