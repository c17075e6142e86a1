"""Where artifacts live, shared by every package that stores files (models, images, training).

``protocol`` is what callers hold; ``factory.open_artifact_store`` picks the file:// or s3://
store from the settings; ``files.write_atomically`` is the one way modelport writes a file that
readers must see whole or not at all.
"""
