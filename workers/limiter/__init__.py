"""One rate limiter shared by every worker and scheduler process on every host (DESIGN.md decision 5)."""

from workers.limiter.limiter import RateLimiter
from workers.limiter.values import AdaptivePolicy, Decision, Limits, parse_rate_limits

__all__ = ["AdaptivePolicy", "Decision", "Limits", "RateLimiter", "parse_rate_limits"]
