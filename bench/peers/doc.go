// Package peers compares Warren with other RPC systems; it has no API.
package peers
