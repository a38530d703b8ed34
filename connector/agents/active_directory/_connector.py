"""``ActiveDirectoryConnector``: the ``active-directory`` agent type.

It reads users (full and delta import) and writes attributes of existing users, above all
``thumbnailPhoto``, over ldap3. The pieces live next to this file: settings, connections, import,
export and LDIF; this class only wires them to the SDK's lifecycle (``open`` → pages or batches →
``close``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from connector.agents.active_directory._connection import (
    DcRefused,
    Link,
    LinkPool,
    Outcome,
    ServerUnreachable,
    dc_state_stop,
)
from connector.agents.active_directory._export import (
    Exporter,
    ExportStats,
    computed,
    not_in_schema,
    unknown_flow_attributes,
)
from connector.agents.active_directory._import import Importer
from connector.agents.active_directory._ldap import equals_filter, normalize_dn
from connector.agents.active_directory._ldif import LdifWriter
from connector.agents.active_directory._locator import DcLocator
from connector.agents.active_directory._permissions import account_label, container_of, dsacls_line, sample_gaps
from connector.agents.active_directory._schema import OBJECT_CLASS, build_schema
from connector.agents.active_directory._settings import ActiveDirectorySettings
from connector.sdk import (
    Capabilities,
    CheckResult,
    Connector,
    ConnectorContext,
    ConnectorError,
    CSEntryChange,
    ExportResult,
    ImportPage,
    ImportRequest,
    Schema,
)

__all__ = ["ActiveDirectoryConnector"]

#: What a check of ``mvsync doctor`` that stopped on a DC's answer says (``dc_state_stop``, ``Importer._raise_for``):
#: doctor imports and exports nothing, so there is no watermark or pending change to speak of.
_DOCTOR = Outcome("mvsync doctor could not make this check", "mvsync doctor")
#: The write-rights check after a reachability check that could not bind: it tries nothing (the same timeouts).
_NOT_BOUND = "not checked: no bind to a DC (the reachable check says why)"


class ActiveDirectoryConnector(Connector[ActiveDirectorySettings]):
    """Users of an Active Directory domain over LDAPS/StartTLS: import, delta import, attribute export."""

    settings_model: ClassVar[type[ActiveDirectorySettings]] = ActiveDirectorySettings
    capabilities: ClassVar[Capabilities] = Capabilities(
        full_import=True,
        delta_import=True,
        export=True,
        deletes_objects=False,  # it only updates existing users (see _export)
        max_page_size=1000,
        max_batch_size=500,
    )
    description: ClassVar[str] = "Active Directory users over ldap3 (thumbnailPhoto write-back, DirSync/USN delta)"

    def __init__(self, settings: ActiveDirectorySettings, context: ConnectorContext) -> None:
        super().__init__(settings, context)
        self._schema = build_schema(settings.extra_attributes)
        self._link: Link | None = None
        self._importer: Importer | None = None
        self._pool: LinkPool | None = None
        self._exporter: Exporter | None = None
        self._ldif: LdifWriter | None = None
        #: The step's DCs (with ``domain``: found in DNS once, then used by every connection of the step).
        self._locator = DcLocator(settings, context.logger)
        #: ``check`` could not bind (no DC answered, a refused password, a certificate): ``doctor_checks``
        #: then reads no rights, which would only wait for the same timeouts and say the same again.
        self._unbound = False

    # -- lifecycle --------------------------------------------------------------------------------
    def open(self) -> None:
        """Bind once, so bad credentials, certificates or addresses stop the step before any work."""
        s = self.settings
        log = self.context.logger
        if s.security == "plain":
            log.warning(
                "agent %s binds to %s over plain LDAP (allow_plain_ldap = true): the password and all data "
                "cross the network unencrypted; use security = 'ldaps' or 'starttls'",
                self.context.agent,
                s.directory,
            )
        elif not s.tls_validate:
            log.warning(
                "agent %s does not validate the certificate of %s (tls_validate = false): anyone on the path "
                "can impersonate the domain controller",
                self.context.agent,
                s.directory,
            )
        self._link = Link(s, log, locator=self._locator)
        self._link.connect()

    def close(self) -> None:
        if self._exporter is not None:
            self._exporter.close()
            stats = self._exporter.stats
            if stats.changes:
                self.context.logger.info(
                    "export: %d changes, %d writes, %d no-ops skipped, %d LDIF records, %d failed, %d retry",
                    stats.changes,
                    stats.writes,
                    stats.noops,
                    stats.ldif_records,
                    stats.failed,
                    stats.retry,
                )
        if self._ldif is not None and self._ldif.records:
            # the operator's only pointer to the file (the engine's step shows the export counts alone)
            self.context.logger.info(
                "agent %s: %d LDIF change records written to %s (nothing was written to the directory); "
                "review the file, then apply it with `ldapmodify -f` or `ldifde -i`",
                self.context.agent,
                self._ldif.records,
                self._ldif.path,
            )
        if self._pool is not None:
            self._pool.close()
        if self._ldif is not None:
            self._ldif.close()
        if self._link is not None:
            self._link.close()
        self._link = self._importer = self._pool = self._exporter = self._ldif = None

    def check(self) -> CheckResult:
        link = Link(self.settings, self.context.logger)
        try:
            try:
                link.connect()  # a DC out of reach is said as such, not as an import that stopped
            except ConnectorError:
                self._unbound = True
                raise
            importer = Importer(self.settings, link, self._schema, self.context, outcome=_DOCTOR)
            dc = importer.identity()
            importer.check_bases()
            importer.check_attributes(dc)
        except ConnectorError as exc:
            return CheckResult(False, str(exc))
        finally:
            link.close()
        how = "Kerberos" if self.settings.auth == "kerberos" else "simple bind"
        bases = len(self.settings.base_dns)
        return CheckResult(
            True,
            f"bound to {link.describe()} as {self.settings.account} ({how}); DC {dc.service}; "
            f"{bases} base DN{'s' if bases != 1 else ''} found",
        )

    def doctor_checks(self) -> list[tuple[str, str, str]]:
        """``mvsync doctor``: may the account write what the export flows write, on a sample user per base DN?
        An attribute the directory computes is said to be one, not given a grant that could not help."""
        computed_flows, wanted = self._export_attributes_by_kind()
        findings = [("write-permissions", "error", computed(name)) for name in computed_flows]
        if not wanted:
            return findings or [("write-permissions", "ok", "no export flow writes to this agent")]
        if self._unbound:
            return [*findings, ("write-permissions", "error", _NOT_BOUND)]
        return findings + self._rights_findings(wanted)

    def _rights_findings(self, wanted: list[str]) -> list[tuple[str, str, str]]:
        """The write-rights verdicts for ``wanted`` on a sample user per base DN (``doctor_checks``); an attribute
        the DC's schema lacks is said to be none, not given a grant that could not help."""
        s = self.settings
        link = Link(s, self.context.logger)
        try:
            unknown = unknown_flow_attributes(link, wanted)
            findings = [("write-permissions", "error", not_in_schema(unknown, link.host))] if unknown else []
            wanted = [name for name in wanted if name not in unknown]
            if not wanted:
                return findings
            samples = sample_gaps(link, s.base_dns, equals_filter(s.filter, s.filter_equals), wanted)
            label = account_label(link, s, _domain_root(s.base_dns[0]))
        except DcRefused as exc:  # busy, unavailable or out of time: the DC's state, said as for the other checks
            return [("write-permissions", "error", str(dc_state_stop(link, exc.what, exc.detail, _DOCTOR)))]
        except (ConnectorError, ServerUnreachable) as exc:
            return [("write-permissions", "error", str(exc))]
        finally:
            link.close()
        return findings + [
            _permission_finding(base, dn, missing, wanted, label) for base, (dn, missing) in samples.items()
        ]

    def _export_attributes_by_kind(self) -> tuple[list[str], list[str]]:
        """The attributes export flows write, as (those the directory computes, the others), each sorted."""
        object_class = self._schema.object_class(OBJECT_CLASS)
        assert object_class is not None
        exportable = {a.name.lower(): a.exportable for a in object_class.attributes}
        computed_flows: list[str] = []
        writable: list[str] = []
        for name in sorted(self._export_attributes()):
            (writable if exportable.get(name.lower(), True) else computed_flows).append(name)
        return computed_flows, writable

    def _export_attributes(self) -> frozenset[str]:
        return next(
            (names for cls, names in self.context.export_attributes.items() if cls.lower() == OBJECT_CLASS),
            frozenset(),
        )

    def step_note(self) -> str | None:
        """Which DC served the step (and the ones passed over on the way): the run history keeps it, since
        a delta's watermark belongs to that DC and an operator asks which one answered."""
        if self._link is None or not self._link.host:  # no DC yet: the DNS lookup of domain's DCs failed
            return None
        note = f"served by {self._link.describe()}"
        # an export's other connections fail over on their own: name those that ended elsewhere or lost a DC
        others = [] if self._pool is None else self._pool.links()[1:]
        for number, link in enumerate(others, 2):
            if link.host and (link.host != self._link.host or link.lost):
                note += f"; export connection {number}: {link.describe()}"
        return note

    # -- SDK methods ------------------------------------------------------------------------------
    #: Its schema is the standard attributes and ``extra_attributes``: ``mvsync schema`` reads no other setting.
    schema_settings: ClassVar[tuple[str, ...] | None] = ("extra_attributes",)

    @classmethod
    def schema_for(cls, settings: Mapping[str, Any]) -> Schema:
        return build_schema(settings.get("extra_attributes", ()))

    def get_schema(self) -> Schema:
        return self._schema

    def import_page(self, request: ImportRequest) -> ImportPage:
        if self._importer is None:
            self._importer = Importer(self.settings, self._require_link(), self._schema, self.context)
        return self._importer.page(request)

    def prepare_export(self, changes: Sequence[CSEntryChange]) -> None:
        """The write rights for the whole step, read before its first batch (see ``Exporter.prepare``)."""
        self._require_exporter().prepare(changes)

    def export(self, changes: Sequence[CSEntryChange]) -> list[ExportResult]:
        return self._require_exporter().export(changes)

    @property
    def export_stats(self) -> ExportStats:
        """Counts of this step's exports (LDAP writes, skipped no-ops, failures)."""
        return self._require_exporter().stats

    # -- wiring -----------------------------------------------------------------------------------
    def _require_link(self) -> Link:
        if self._link is None:
            self.open()
        assert self._link is not None
        return self._link

    def _require_exporter(self) -> Exporter:
        if self._exporter is None:
            s = self.settings
            first = self._require_link()
            created = [False]

            def factory() -> Link:
                # the bound import link is the pool's first member: no second bind for small steps
                if not created[0]:
                    created[0] = True
                    return first
                return Link(s, self.context.logger, prefer=first.host, locator=first.locator)  # the DC the step is on

            self._pool = LinkPool(factory, s.export_connections)
            if s.ldif_output is not None:
                self._ldif = LdifWriter(_ldif_path(s))
            object_class = self._schema.object_class(OBJECT_CLASS)
            assert object_class is not None
            allowed = self._export_attributes()
            self._exporter = Exporter(
                pool=self._pool,
                object_class=object_class,
                allowed=allowed,
                bases=s.base_dns,
                normalized_bases=[normalize_dn(b) for b in s.base_dns],
                write_rate=s.write_rate,
                threads=s.export_connections,
                ldif=self._ldif,
                dry_run=self.context.dry_run,
                log=self.context.logger,
                check_rights=s.check_permissions,
                account_label=lambda link: account_label(link, s, _domain_root(s.base_dns[0])),
                scope_filter=equals_filter(s.filter, s.filter_equals),
                flow_key=f"agents.{self.context.agent}.export_flow" if self.context.agent else "export_flow",
            )
        return self._exporter


def _ldif_path(settings: ActiveDirectorySettings) -> Path:
    """The step's LDIF file: ``{timestamp}`` in the setting gives each export step its own file."""
    assert settings.ldif_output is not None
    return Path(str(settings.ldif_output).replace("{timestamp}", time.strftime("%Y%m%dT%H%M%S")))


def _domain_root(dn: str) -> str:
    """The ``DC=...`` suffix of a DN: the domain's naming context."""
    parts = [p.strip() for p in dn.split(",")]
    return ",".join(p for p in parts if p.lower().startswith("dc="))


def _permission_finding(
    base: str, dn: str | None, missing: list[str], wanted: list[str], account: str
) -> tuple[str, str, str]:
    """One doctor verdict for one base DN's sample object."""
    if dn is None:
        return ("write-permissions", "warning", f"no user under {base} to check write rights on")
    if not missing:
        return ("write-permissions", "ok", f"{account} may write {', '.join(wanted)} on {dn} (sample of {base})")
    container = container_of(dn)
    grants = "; ".join(dsacls_line(container, account, attribute, OBJECT_CLASS) for attribute in missing)
    msg = f"{account} may not write {', '.join(missing)} on {dn} (sample of {base}); grant it with: {grants}"
    return ("write-permissions", "error", msg)
