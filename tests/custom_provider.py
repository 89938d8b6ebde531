"""A provider loaded by dotted path, as a project would add its own."""

from django_kms_fields.providers import LocalProvider


class TaggingProvider(LocalProvider):
    """The local provider, with a fixed entry added to every encryption context."""

    name = "tagging"

    def generate_data_key(self, master_key_id, encryption_context):
        return super().generate_data_key(master_key_id, {**encryption_context, "app": "tests"})

    def decrypt_data_key(self, wrapped, master_key_id, encryption_context):
        return super().decrypt_data_key(
            wrapped, master_key_id, {**encryption_context, "app": "tests"}
        )


class SlowProvider(LocalProvider):
    """The local provider, slowed down so that concurrent first writes overlap."""

    def generate_data_key(self, master_key_id, encryption_context):
        import time

        time.sleep(0.3)
        return super().generate_data_key(master_key_id, encryption_context)
