"""Stand-in for ``dassl.data.datasets``: the few-shot draw's signature (no repeats by default)."""


class DatasetBase:
    def generate_fewshot_dataset(self, *data_sources, num_shots=-1, repeat=False):
        raise NotImplementedError("stand-in")
