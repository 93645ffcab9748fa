"""code.run: Python or bash in a sandbox (docker, bwrap, process), its file effects journaled."""
