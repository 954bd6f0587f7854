"""Files that ship inside the podpost package (package data), so a wheel has them: the dev
policy ``dev.yaml`` that ``podpost dev`` and the file source read by default
(`runtime.settings.DEV_POLICY`)."""
