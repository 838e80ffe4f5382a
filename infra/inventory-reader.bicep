// Reader on one subscription for kiln's app identity, so Resource Graph
// shows retention the VMs and scale sets there that may use kiln's images.
// Resource Graph only returns what the caller can read: a subscription left
// out here is a subscription whose consumers retention cannot see.
//
//   az deployment sub create -l <region> -f infra/inventory-reader.bicep -p appPrincipalId=<output of main.bicep>
// Repeat per subscription (or assign Reader at a management group).

targetScope = 'subscription'

@description('The kiln app identity (main.bicep output appPrincipalId).')
param appPrincipalId string

var readerRole = 'acdd72a7-3385-48ef-bd42-f606fba81ae7'

resource reader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(subscription().id, appPrincipalId, readerRole)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', readerRole)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}
