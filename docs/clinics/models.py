from django.db import models


class Clinic(models.Model):
    """The tenant of the examples."""

    name = models.CharField(max_length=100)

    def __str__(self) -> str:
        return self.name
