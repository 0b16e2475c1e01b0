//! The partition faults' networks. With a partition fault in the rotation, the worker
//! containers reach RabbitMQ and ZooKeeper through two Docker bridge networks the run creates,
//! one per engine, instead of the host's network. `docker network disconnect` of the master
//! from one of them cuts it off from that engine alone (no FIN, no RST: its packets go
//! nowhere) while it still reaches the other; connecting it again, at the same address when
//! that is still free, heals the partition.
//!
//! The engines listen on loopback, which a container cannot reach: on each network's gateway
//! address (the host's end of the bridge) this process relays every engine port to the same
//! port on 127.0.0.1. Written here because the whole relay is an accept loop around
//! `tokio::io::copy_bidirectional`; a proxy crate would bring far more than that.
//!
//! Dropping [`Networks`] stops the relays and removes both networks, first disconnecting
//! whatever is still attached. It is dropped after the run's [`super::namespace::Namespace`],
//! whose drop removes the containers.

use std::collections::HashMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bollard::models::{
    EndpointIpamConfig, EndpointSettings, Ipam, IpamConfig, NetworkConnectRequest,
    NetworkCreateRequest, NetworkDisconnectRequest,
};
use bollard::query_parameters::{InspectContainerOptions, InspectNetworkOptions};
use bollard::Docker;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};

use crate::adapters::docker::CLUSTER_LABEL;

/// The engine a partition cuts the master off from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Rabbitmq,
    Zookeeper,
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Engine::Rabbitmq => "RabbitMQ",
            Engine::Zookeeper => "ZooKeeper",
        })
    }
}

/// Connections one relay carries at once; past it a new one is closed at once.
const RELAY_CONNECTIONS: usize = 256;

/// Bound on the relay's connect to the engine on loopback.
const RELAY_CONNECT_BOUND: Duration = Duration::from_secs(2);

/// How the engines look from the workers' networks: what the orchestrator passes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerView {
    /// `--docker-network`: the RabbitMQ network (the mode), then the ZooKeeper one.
    pub docker_network: String,
    /// The RabbitMQ URL(s) without a vhost, on the RabbitMQ network's gateway.
    pub amqp_base: String,
    /// The ZooKeeper connect string without a chroot, on the ZooKeeper network's gateway.
    pub zk: String,
}

struct Net {
    name: String,
    gateway: Ipv4Addr,
    /// The host's interface of the network.
    bridge: String,
}

pub struct Networks {
    docker: Docker,
    rabbitmq: Net,
    zookeeper: Net,
    relays: Vec<JoinHandle<()>>,
}

/// How a partition ended for the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Healed {
    /// Connected again at the address it had: its connections can resume.
    SameAddress,
    /// Connected again at another address (its old one was taken meanwhile).
    NewAddress,
    /// The container was gone (replaced and removed while cut off).
    Gone,
}

impl Networks {
    /// Creates the run's two networks (`<run>-rabbitmq`, `<run>-zk`) and the relays on their
    /// gateways for every port of `amqp_base` and `zk`, which must name loopback hosts.
    pub async fn create(
        run: &str,
        amqp_base: &str,
        zk: &str,
    ) -> anyhow::Result<(Self, WorkerView)> {
        let (_, amqp_ports) = rehost(amqp_base, Ipv4Addr::LOCALHOST)?;
        let (_, zk_ports) = rehost(zk, Ipv4Addr::LOCALHOST)?;
        let docker = Docker::connect_with_local_defaults()
            .context("connecting to the Docker engine")?
            .negotiate_version()
            .await
            .context("asking the Docker engine its API version")?;
        let mut networks = Networks {
            rabbitmq: create_network(&docker, run, &format!("{run}-rabbitmq"), bridge("r")).await?,
            zookeeper: Net {
                name: String::new(),
                gateway: Ipv4Addr::UNSPECIFIED,
                bridge: String::new(),
            },
            relays: Vec::new(),
            docker,
        };
        // From here on `networks` is the guard: an error below removes what was created.
        networks.zookeeper =
            create_network(&networks.docker, run, &format!("{run}-zk"), bridge("z")).await?;
        for (net, ports) in [
            (&networks.rabbitmq, amqp_ports),
            (&networks.zookeeper, zk_ports),
        ] {
            for port in ports {
                let listener = listen_on(net, port)
                    .with_context(|| format!("relay on {}:{port}", net.gateway))?;
                let to = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
                networks.relays.push(tokio::spawn(relay(listener, to)));
            }
        }
        let view = WorkerView {
            docker_network: format!("{},{}", networks.rabbitmq.name, networks.zookeeper.name),
            amqp_base: rehost(amqp_base, networks.rabbitmq.gateway)?.0,
            zk: rehost(zk, networks.zookeeper.gateway)?.0,
        };
        Ok((networks, view))
    }

    fn net(&self, engine: Engine) -> &Net {
        match engine {
            Engine::Rabbitmq => &self.rabbitmq,
            Engine::Zookeeper => &self.zookeeper,
        }
    }

    /// Disconnects `container` from `engine`'s network; the address it had there.
    pub async fn cut(&self, engine: Engine, container: &str) -> anyhow::Result<String> {
        let net = &self.net(engine).name;
        let inspected = self
            .docker
            .inspect_container(container, None::<InspectContainerOptions>)
            .await
            .with_context(|| format!("inspecting container {container}"))?;
        let address = inspected
            .network_settings
            .and_then(|s| s.networks)
            .and_then(|mut n| n.remove(net))
            .and_then(|endpoint| endpoint.ip_address)
            .filter(|ip| !ip.is_empty())
            .with_context(|| format!("container {container} is not on network {net}"))?;
        let request = NetworkDisconnectRequest {
            container: Some(container.to_owned()),
            force: Some(true),
        };
        self.docker
            .disconnect_network(net, request)
            .await
            .with_context(|| format!("disconnecting {container} from {net}"))?;
        Ok(address)
    }

    /// Connects `container` to `engine`'s network again, at `address` if it is still free.
    pub async fn heal(&self, engine: Engine, container: &str, address: &str) -> Healed {
        let net = &self.net(engine).name;
        let connect = |address: Option<&str>| NetworkConnectRequest {
            container: Some(container.to_owned()),
            endpoint_config: Some(EndpointSettings {
                ipam_config: Some(EndpointIpamConfig {
                    ipv4_address: address.map(str::to_owned),
                    ..EndpointIpamConfig::default()
                }),
                ..EndpointSettings::default()
            }),
        };
        if self
            .docker
            .connect_network(net, connect(Some(address)))
            .await
            .is_ok()
        {
            return Healed::SameAddress;
        }
        match self.docker.connect_network(net, connect(None)).await {
            Ok(()) => Healed::NewAddress,
            Err(e) => {
                tracing::warn!(%container, network = %net, error = %e, "cannot connect again");
                Healed::Gone
            }
        }
    }
}

impl Drop for Networks {
    fn drop(&mut self) {
        for relay in &self.relays {
            relay.abort();
        }
        let docker = self.docker.clone();
        let names: Vec<String> = [&self.rabbitmq.name, &self.zookeeper.name]
            .into_iter()
            .filter(|n| !n.is_empty())
            .cloned()
            .collect();
        // Drop cannot await: a runtime of its own on a thread of its own (as the namespace).
        let removed = std::thread::spawn(move || -> anyhow::Result<()> {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(remove_networks(&docker, &names))
        })
        .join();
        match removed {
            Ok(Ok(())) => {}
            other => eprintln!("chaos: the run's Docker networks not wholly removed: {other:?}"),
        }
    }
}

/// Creates a bridge network (host interface `bridge`) on a /24 of 10.213.0.0/16 no other network holds (tried at random:
/// a pool that overlaps is refused by the engine).
async fn create_network(
    docker: &Docker,
    run: &str,
    name: &str,
    bridge: String,
) -> anyhow::Result<Net> {
    let mut last = None;
    for _ in 0..16 {
        let third = rand::random::<u8>();
        let gateway = Ipv4Addr::new(10, 213, third, 1);
        let request = NetworkCreateRequest {
            name: name.to_owned(),
            driver: Some("bridge".to_owned()),
            options: Some(HashMap::from([(
                "com.docker.network.bridge.name".to_owned(),
                bridge.clone(),
            )])),
            ipam: Some(Ipam {
                config: Some(vec![IpamConfig {
                    subnet: Some(format!("10.213.{third}.0/24")),
                    gateway: Some(gateway.to_string()),
                    ..IpamConfig::default()
                }]),
                ..Ipam::default()
            }),
            labels: Some(HashMap::from([(CLUSTER_LABEL.to_owned(), run.to_owned())])),
            ..NetworkCreateRequest::default()
        };
        match docker.create_network(request).await {
            Ok(_) => {
                return Ok(Net {
                    name: name.to_owned(),
                    gateway,
                    bridge,
                })
            }
            Err(e) => last = Some(e),
        }
    }
    Err(anyhow::anyhow!("{last:?}")).with_context(|| format!("creating Docker network {name}"))
}

async fn remove_networks(docker: &Docker, names: &[String]) -> anyhow::Result<()> {
    for name in names {
        let network = match docker
            .inspect_network(name, None::<InspectNetworkOptions>)
            .await
        {
            Ok(network) => network,
            Err(_) => continue, // already gone
        };
        for container in network.containers.unwrap_or_default().into_keys() {
            let request = NetworkDisconnectRequest {
                container: Some(container),
                force: Some(true),
            };
            let _ = docker.disconnect_network(name, request).await;
        }
        docker
            .remove_network(name)
            .await
            .with_context(|| format!("removing Docker network {name}"))?;
    }
    Ok(())
}

/// A bridge interface name of the run's: `rs<kind>-<8 hex>`, within Linux's 15 bytes.
fn bridge(kind: &str) -> String {
    format!("rs{kind}-{:08x}", rand::random::<u32>())
}

/// A listener on `net`'s gateway that only takes connections arriving on `net`'s own bridge.
/// The host accepts a packet for any of its addresses on any interface, and a container cut
/// off from one network still has its default route through the other: without the device
/// binding, its packets would reach this gateway the long way round, and the cut would be no
/// partition at all.
fn listen_on(net: &Net, port: u16) -> anyhow::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind_device(Some(net.bridge.as_bytes()))?;
    socket.bind(SocketAddr::from((net.gateway, port)))?;
    Ok(socket.listen(1024)?)
}

/// Carries every connection accepted on `listener` to `to`, at most [`RELAY_CONNECTIONS`] at
/// once; the connections end with the relay (aborting it drops its set).
async fn relay(listener: TcpListener, to: SocketAddr) {
    let limit = Arc::new(Semaphore::new(RELAY_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        let inbound = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next() => continue,
        };
        let Ok((mut inbound, _)) = inbound else {
            // Out of descriptors, most likely: a moment's pause, not a spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
            continue; // over the bound: closed
        };
        connections.spawn(async move {
            let _permit = permit;
            let Ok(Ok(mut outbound)) =
                tokio::time::timeout(RELAY_CONNECT_BOUND, TcpStream::connect(to)).await
            else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
        });
    }
}

/// `engines` (comma-separated `host:port` items or URLs with an authority, each on a loopback
/// host) with every host replaced by `host`; and the ports, each once.
fn rehost(engines: &str, host: Ipv4Addr) -> anyhow::Result<(String, Vec<u16>)> {
    let mut ports = Vec::new();
    let mut items = Vec::new();
    for item in engines.split(',') {
        let (scheme, rest) = match item.find("://") {
            Some(at) => item.split_at(at + 3),
            None => ("", item),
        };
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(at) => authority.split_at(at + 1),
            None => ("", authority),
        };
        let Some((old_host, port)) = hostport.rsplit_once(':') else {
            bail!("{item:?} names no port");
        };
        if !matches!(old_host, "127.0.0.1" | "localhost") {
            bail!("{item:?} is not on loopback: the partition faults relay loopback engines only");
        }
        let port: u16 = port
            .parse()
            .with_context(|| format!("{item:?}: port {port:?}"))?;
        if !ports.contains(&port) {
            ports.push(port);
        }
        items.push(format!("{scheme}{userinfo}{host}:{port}{tail}"));
    }
    Ok((items.join(","), ports))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rehost_moves_every_loopback_engine_and_keeps_the_rest() {
        let gw = Ipv4Addr::new(10, 213, 7, 1);
        let (amqp, ports) = rehost(
            "amqp://guest:guest@127.0.0.1:5701,amqp://guest:guest@localhost:5702/%2f?heartbeat=5",
            gw,
        )
        .unwrap();
        assert_eq!(
            amqp,
            "amqp://guest:guest@10.213.7.1:5701,amqp://guest:guest@10.213.7.1:5702/%2f?heartbeat=5"
        );
        assert_eq!(ports, vec![5701, 5702]);
        let (zk, ports) = rehost("127.0.0.1:2191,127.0.0.1:2192,127.0.0.1:2191", gw).unwrap();
        assert_eq!(zk, "10.213.7.1:2191,10.213.7.1:2192,10.213.7.1:2191");
        assert_eq!(ports, vec![2191, 2192]);
    }

    #[test]
    fn rehost_refuses_what_it_cannot_relay() {
        let gw = Ipv4Addr::new(10, 213, 7, 1);
        assert!(rehost("amqp://guest:guest@192.0.2.9:5672", gw).is_err());
        assert!(rehost("127.0.0.1", gw).is_err());
        assert!(rehost("127.0.0.1:http", gw).is_err());
    }
}
