"""The Apache Kafka broker of the local runtime: jars from Maven Central, KRaft config, format.

The broker is the real one (org.apache.kafka:kafka_2.13), assembled by Maven from
deploy/kafka/pom.xml into a project-local cache, never a tarball or a container. This
module prepares what a broker node needs; the supervisor (stack.py) runs it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

POM = Path(__file__).resolve().parents[2] / "deploy" / "kafka" / "pom.xml"
_MAVEN_NS = {"m": "http://maven.apache.org/POM/4.0.0"}

# A JVM per broker on a 2-core, shared machine: a small fixed heap keeps three brokers and
# the services comfortable, and G1 keeps pauses short enough for session timeouts.
JVM_OPTS = [
    "-Xms256m",
    "-Xmx768m",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-Djava.awt.headless=true",
    # slf4j-simple: warnings and errors only; readiness is checked with a client instead.
    "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
    "-Dorg.slf4j.simpleLogger.showDateTime=true",
]


def pinned_version() -> str:
    """The Kafka release pinned in deploy/kafka/pom.xml (property kafka.version)."""
    root = ET.parse(POM).getroot()
    node = root.find("m:properties/m:kafka.version", _MAVEN_NS)
    if node is None or not (node.text or "").strip():
        raise RuntimeError(f"{POM} has no <kafka.version> property")
    return node.text.strip()


def java_executable() -> str:
    """java from JAVA_HOME when set, else from PATH."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise RuntimeError("java is not on PATH: install Java 17 or newer (see README)")
    return found


def fetch_jars(cache_dir: Path, version: str, *, log=print) -> Path:
    """Download the broker's runtime jars with Maven into cache_dir/<version>/libs, once.

    Returns the libs directory. A marker file holds the pom's hash, so editing the pom
    (another SLF4J binding, say) fetches again while an unchanged pom costs nothing.
    """
    libs = cache_dir / version / "libs"
    marker = cache_dir / version / ".complete"
    digest = hashlib.sha256(POM.read_bytes() + version.encode()).hexdigest()
    if marker.exists() and marker.read_text() == digest and any(libs.glob("kafka_2.13-*.jar")):
        return libs
    mvn = shutil.which("mvn")
    if not mvn:
        raise RuntimeError("mvn is not on PATH: install Maven (see README)")
    log(f"fetching Apache Kafka {version} jars with Maven into {libs} (once)")
    if libs.exists():
        shutil.rmtree(libs)
    libs.mkdir(parents=True)
    cmd = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(POM),
        f"-Dkafka.version={version}",
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={libs}",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise RuntimeError(f"Maven could not fetch Kafka {version} (exit {result.returncode})")
    marker.write_text(digest)
    return libs


@dataclass(frozen=True)
class BrokerNode:
    """One KRaft node in combined mode (broker and controller in one process)."""

    node_id: int
    port: int
    controller_port: int
    data_dir: Path

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


def plan_nodes(count: int, port: int, controller_port: int, state_dir: Path) -> list[BrokerNode]:
    """Ports and directories of a `count`-node cluster: node n takes port + n - 1."""
    return [
        BrokerNode(
            node_id=n,
            port=port + n - 1,
            controller_port=controller_port + n - 1,
            data_dir=state_dir / "kafka" / f"node-{n}",
        )
        for n in range(1, count + 1)
    ]


def server_properties(node: BrokerNode, nodes: list[BrokerNode]) -> str:
    """server.properties of one node. A single node replicates nothing; three nodes give
    every topic and the transaction state log replication 3 with min.insync.replicas 2,
    so one broker may die without losing an acknowledged record."""
    voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in nodes)
    replicas = 3 if len(nodes) >= 3 else 1
    min_isr = 2 if replicas == 3 else 1
    props = {
        "process.roles": "broker,controller",
        "node.id": node.node_id,
        "listeners": f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "controller.quorum.voters": voters,
        "log.dirs": str(node.data_dir / "log"),
        "default.replication.factor": replicas,
        "min.insync.replicas": min_isr,
        "offsets.topic.replication.factor": replicas,
        "transaction.state.log.replication.factor": replicas,
        "transaction.state.log.min.isr": min_isr,
        # Tests and the demo start consumers right after the broker: no 3 s wait for joins.
        "group.initial.rebalance.delay.ms": 0,
        # Topics come from schemas/asyncapi.yaml (`wlex topics create`), never from typos.
        "auto.create.topics.enable": "false",
        # Keep the few internal partitions small on a laptop-sized machine.
        "offsets.topic.num.partitions": 10,
        "transaction.state.log.num.partitions": 10,
        "num.partitions": 1,
        "log.segment.bytes": 64 * 1024 * 1024,
        # A dead broker should be noticed quickly in fault tests.
        "broker.session.timeout.ms": 6000,
        "broker.heartbeat.interval.ms": 1000,
        "unclean.leader.election.enable": "false",
    }
    return "".join(f"{k}={v}\n" for k, v in props.items())


def prepare_nodes(libs: Path, nodes: list[BrokerNode], cluster_id_file: Path) -> list[Path]:
    """Write each node's server.properties and format its storage (once per data dir).

    All nodes share one cluster id, kept in cluster_id_file so a restart reuses it.
    Returns the properties files in node order.
    """
    java = java_executable()
    classpath = str(libs / "*")
    if cluster_id_file.exists():
        cluster_id = cluster_id_file.read_text().strip()
    else:
        cluster_id = _storage_tool(java, classpath, ["random-uuid"]).strip().splitlines()[-1]
        cluster_id_file.parent.mkdir(parents=True, exist_ok=True)
        cluster_id_file.write_text(cluster_id)
    files = []
    for node in nodes:
        node.data_dir.mkdir(parents=True, exist_ok=True)
        props = node.data_dir / "server.properties"
        props.write_text(server_properties(node, nodes))
        if not (node.data_dir / "log" / "meta.properties").exists():
            # With a static controller.quorum.voters list a plain format is enough.
            _storage_tool(java, classpath, ["format", "-t", cluster_id, "-c", str(props)])
        files.append(props)
    return files


def broker_command(libs: Path, properties: Path) -> list[str]:
    """The command line that runs one node in the foreground (the supervisor owns it)."""
    log_dir = properties.parent / "app-logs"
    return [
        java_executable(),
        *JVM_OPTS,
        f"-Dkafka.logs.dir={log_dir}",
        "-cp",
        str(libs / "*"),
        "kafka.Kafka",
        str(properties),
    ]


def tool_command(libs: Path, main_class: str, args: list[str]) -> list[str]:
    """A Kafka command-line tool from the same jars (console producer and consumer, ...)."""
    return [java_executable(), "-Xmx256m", "-cp", str(libs / "*"), main_class, *args]


def console_classes(version: str) -> tuple[str, str]:
    """Main classes of the console producer and consumer: they moved out of the Scala core
    into kafka-tools with 4.0."""
    if int(version.split(".")[0]) >= 4:
        return (
            "org.apache.kafka.tools.ConsoleProducer",
            "org.apache.kafka.tools.consumer.ConsoleConsumer",
        )
    return ("kafka.tools.ConsoleProducer", "org.apache.kafka.tools.consumer.ConsoleConsumer")


def _storage_tool(java: str, classpath: str, args: list[str]) -> str:
    result = subprocess.run(
        [java, "-Xmx256m", "-cp", classpath, "kafka.tools.StorageTool", *args],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"StorageTool {args[0]} failed: {result.stdout}{result.stderr}")
    return result.stdout
