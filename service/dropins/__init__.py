"""Drop-in copies of the Anthropic Message Batches and OpenAI Batch APIs, for their official SDKs."""

from fastapi import APIRouter

from service.dropins import anthropic, openai

router = APIRouter()
router.include_router(anthropic.router)
router.include_router(openai.router)
