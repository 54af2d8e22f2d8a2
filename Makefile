# The README's two commands. Without make: bash tools/demo.sh / bash tools/test.sh
.PHONY: demo test setup preview readme export clean
demo:      ## set up, run the book (smoke profile), build the HTML preview and figures
	bash tools/demo.sh
test:      ## set up, then drift check, lint and the whole test suite (what CI runs)
	bash tools/test.sh
setup:     ## create .venv with torch==2.13.0 and medgen[dev]
	bash tools/setup.sh
preview:   ## HTML preview of the notebooks as committed (no execution)
	.venv/bin/python tools/book.py preview
readme:    ## README.md from nbs/index.ipynb
	.venv/bin/python tools/book.py readme
export:    ## nbdev-export + nbdev-clean + README + sidebar
	.venv/bin/nbdev-export && .venv/bin/nbdev-clean && .venv/bin/python tools/book.py readme && .venv/bin/python tools/book.py sidebar
clean:
	rm -rf _build _proc _docs
