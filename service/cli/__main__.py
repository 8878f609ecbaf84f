"""`python -m service.cli ...`: how `mmjobs up` and the tests start the service's processes."""

from service.cli.main import app

app()
