# Build, install and test service-mgr the way packagers do:
#
#   make                                  # cargo build --release --locked
#   make install DESTDIR=/tmp/pkg PREFIX=/usr
#   make uninstall DESTDIR=/tmp/pkg PREFIX=/usr
#   make check                            # cargo test
#   make docs                             # regenerate man/ and completions/ (cargo xtask docs)
#
# One binary, PREFIX/bin/service-mgr; the other names are relative symlinks
# to it (sbin/service-mgrd, sbin/service-mgr-agentd, bin/service-mgr-client).
# BIN picks the binary to install (default: the release build under
# CARGO_TARGET_DIR, itself defaulting to target/; make builds it if it is
# missing). The installed binary is stripped with STRIP (STRIP=true keeps the
# symbols, e.g. for a distribution's own -dbg split). The init scripts and
# units are installed with the paths of this PREFIX.

PREFIX ?= /usr/local
DESTDIR ?=
CARGO_TARGET_DIR ?= target
BIN ?= $(CARGO_TARGET_DIR)/release/service-mgr
STRIP ?= strip
CARGO ?= cargo
INSTALL ?= install

bindir = $(PREFIX)/bin
sbindir = $(PREFIX)/sbin
datadir = $(PREFIX)/share
mandir = $(datadir)/man
docdir = $(datadir)/doc/service-mgr
bashcompdir = $(datadir)/bash-completion/completions
zshcompdir = $(datadir)/zsh/site-functions
fishcompdir = $(datadir)/fish/vendor_completions.d

# The names the binary answers to: completions exist for each.
NAMES = service-mgr service-mgrd service-mgr-agentd service-mgr-client
# Service files, copied with their modes (init scripts are executable).
CONTRIB = README.md init.d rc.d systemd logrotate newsyslog

.PHONY: all build install uninstall check docs

all: build

build:
	$(CARGO) build --release --locked

$(CARGO_TARGET_DIR)/release/service-mgr:
	CARGO_TARGET_DIR="$(CARGO_TARGET_DIR)" $(CARGO) build --release --locked

check:
	$(CARGO) test

docs:
	$(CARGO) run --quiet --package xtask -- docs

install: $(BIN)
	$(INSTALL) -d "$(DESTDIR)$(bindir)" "$(DESTDIR)$(sbindir)"
	$(INSTALL) -m 755 "$(BIN)" "$(DESTDIR)$(bindir)/service-mgr"
	$(STRIP) "$(DESTDIR)$(bindir)/service-mgr"
	ln -sf ../bin/service-mgr "$(DESTDIR)$(sbindir)/service-mgrd"
	ln -sf ../bin/service-mgr "$(DESTDIR)$(sbindir)/service-mgr-agentd"
	ln -sf service-mgr "$(DESTDIR)$(bindir)/service-mgr-client"
	for s in 1 5 7 8; do \
		$(INSTALL) -d "$(DESTDIR)$(mandir)/man$$s" && \
		$(INSTALL) -m 644 man/*.$$s "$(DESTDIR)$(mandir)/man$$s/" || exit 1; \
	done
	$(INSTALL) -d "$(DESTDIR)$(bashcompdir)" "$(DESTDIR)$(zshcompdir)" "$(DESTDIR)$(fishcompdir)"
	for n in $(NAMES); do \
		$(INSTALL) -m 644 "completions/$$n.bash" "$(DESTDIR)$(bashcompdir)/$$n" && \
		$(INSTALL) -m 644 "completions/_$$n" "$(DESTDIR)$(zshcompdir)/_$$n" && \
		$(INSTALL) -m 644 "completions/$$n.fish" "$(DESTDIR)$(fishcompdir)/$$n.fish" || exit 1; \
	done
	$(INSTALL) -d "$(DESTDIR)$(docdir)/examples" "$(DESTDIR)$(docdir)/contrib"
	$(INSTALL) -d "$(DESTDIR)$(docdir)/docs"
	$(INSTALL) -m 644 README.md SECURITY.md BENCHMARKS.md "$(DESTDIR)$(docdir)/"
	$(INSTALL) -m 644 docs/protocol.md "$(DESTDIR)$(docdir)/docs/"
	$(INSTALL) -m 644 contrib/service-mgrd.conf contrib/service-mgr-agentd.conf \
		contrib/client.conf "$(DESTDIR)$(docdir)/examples/"
	cp -R $(addprefix contrib/,$(CONTRIB)) "$(DESTDIR)$(docdir)/contrib/"
	$(INSTALL) -m 644 contrib/service-mgrd.conf contrib/service-mgr-agentd.conf \
		"$(DESTDIR)$(docdir)/contrib/"
	# The scripts name the daemons where this PREFIX puts them.
	for f in init.d/debian/service-mgrd init.d/debian/service-mgr-agentd \
		init.d/redhat/service-mgrd init.d/redhat/service-mgr-agentd \
		systemd/service-mgrd.service systemd/service-mgr-agentd.service; do \
		sed -i.orig 's|/usr/sbin/service-mgr|$(sbindir)/service-mgr|' "$(DESTDIR)$(docdir)/contrib/$$f" && \
		rm -f "$(DESTDIR)$(docdir)/contrib/$$f.orig" || exit 1; \
	done
	for f in rc.d/service-mgrd rc.d/service-mgr-agentd; do \
		sed -i.orig 's|/usr/local/sbin/service-mgr|$(sbindir)/service-mgr|' "$(DESTDIR)$(docdir)/contrib/$$f" && \
		rm -f "$(DESTDIR)$(docdir)/contrib/$$f.orig" || exit 1; \
	done

uninstall:
	rm -f "$(DESTDIR)$(bindir)/service-mgr" "$(DESTDIR)$(bindir)/service-mgr-client" \
		"$(DESTDIR)$(sbindir)/service-mgrd" "$(DESTDIR)$(sbindir)/service-mgr-agentd"
	for p in man/*.[1578]; do \
		f=$${p#man/}; rm -f "$(DESTDIR)$(mandir)/man$${f##*.}/$$f"; \
	done
	for n in $(NAMES); do \
		rm -f "$(DESTDIR)$(bashcompdir)/$$n" "$(DESTDIR)$(zshcompdir)/_$$n" \
			"$(DESTDIR)$(fishcompdir)/$$n.fish"; \
	done
	rm -rf "$(DESTDIR)$(docdir)"
