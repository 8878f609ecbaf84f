"""Cron schedules: a job, a batch or a directory of documents submitted on a timetable (issue 7)."""
