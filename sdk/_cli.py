def main(argv=None):
    raise SystemExit("eoembed: not built yet")
