// The server version reported by GetStatus and `nexus --version`.
export const NEXUS_VERSION = "0.1.0";
