"""Video segments: one fal.ai generation per segment, submitted then polled.

The generic lifecycle (slots, breaker, commit of the request id before anything else, polling
by message, retries, cancel) is the attempt runner's (common.attempts); this kind only says how
to submit a segment, how to ask about it, and what its result is.
"""

from __future__ import annotations

from common.attempts.kind import (
    KindHandler,
    Pending,
    ProviderCalls,
    RequestFailed,
    ResultDelayed,
    Submitted,
    Succeeded,
    Work,
)
from common.domain.kinds import VIDEO_SEGMENT
from common.domain.records import TaskRecord
from common.resilience import ProviderError
from common.webhook_urls import webhook_url
from services.video_worker.ports import (
    GenerationFailed,
    Phase,
    Progress,
    ProviderRequest,
    Video,
    VideoProvider,
)

LOW_PRIORITY = 1  # the proto's PRIORITY_LOW: fal's "low" queue priority


class VideoSegments(KindHandler):
    spec = VIDEO_SEGMENT

    def __init__(
        self, provider: VideoProvider, *, webhook_base: str | None = None, webhook_secret: str = ""
    ) -> None:
        self.provider = provider
        # Where the provider should call back when a request finishes (None: poll only); each
        # submit's URL names its task and attempt, signed with `webhook_secret`.
        self.webhook_base = webhook_base
        self.webhook_secret = webhook_secret

    def model(self, work: Work) -> str:
        return str(work.task.payload["model"])

    async def submit(self, work: Work, calls: ProviderCalls) -> Submitted:
        task = work.task
        webhook = None
        if self.webhook_base:
            webhook = webhook_url(self.webhook_base, self.webhook_secret, task.id, task.attempt)
        request = await calls(
            "submit",
            lambda: self.provider.submit(
                task.payload["model"],
                task.payload["arguments"],
                webhook_url=webhook,
                low_priority=task.priority == LOW_PRIORITY,
            ),
        )
        return Submitted(request.request_id, request.handle)

    async def check(
        self, work: Work, calls: ProviderCalls, *, notified: bool
    ) -> Pending | Succeeded | RequestFailed | ResultDelayed:
        request = _request_of(work.task)
        ran_for = None
        finished = notified
        try:
            if not notified:
                progress = await calls("status", lambda: self.provider.status(request))
                if progress.phase is not Phase.COMPLETED:
                    return _pending(progress)
                ran_for, finished = progress.ran_for, True
            # Finished (or the provider called back to say so): fetch the result.
            video = await calls("result", lambda: self.provider.result(request))
        except GenerationFailed as exc:
            return RequestFailed(exc)
        except ProviderError as exc:
            # (An open circuit is no ProviderError: it goes on to the poll, which waits.)
            if finished and exc.retryable:
                return ResultDelayed(exc)
            raise
        if isinstance(video, Progress):
            return _pending(video)
        return video_ready(video, ran_for)

    async def cancel(self, work: Work, calls: ProviderCalls) -> bool:
        request = _request_of(work.task)
        return await calls("cancel", lambda: self.provider.cancel(request))


def _request_of(task: TaskRecord) -> ProviderRequest:
    # An adopted request (common.attempts.webhooks) has no handle: the adapter finds it by
    # the model it was submitted to.
    handle = task.handle or {"model": task.payload["model"]}
    return ProviderRequest(request_id=task.request_id or "", handle=handle)


def _pending(progress: Progress) -> Pending:
    if progress.phase is Phase.QUEUED:
        where = progress.queue_position
        text = "in queue" if where is None else f"in queue (position {where})"
        return Pending(f"queued:{where}", text)
    return Pending(progress.phase.value, "in progress")


def video_ready(video: Video, ran_for: float | None) -> Succeeded:
    """A segment's success: its video."""
    return Succeeded(
        result={
            "url": video.url,
            "content_type": video.content_type,
            "file_name": video.file_name,
            "file_size": video.file_size,
        },
        message="video ready",
        details={"result_url": video.url},
        ran_for=ran_for,
    )
