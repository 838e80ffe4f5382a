// Deployed at subscription scope (main.bicep calls it with
// `scope: subscription()`): the one read kiln needs there and that no
// resource-group role gives it. Marketplace image versions are listed under
//   /subscriptions/{s}/providers/Microsoft.Compute/locations/{region}/publishers/…/versions
// which is a subscription-level path: an assignment on a resource group does
// not cover it, and a pipeline with a floating `latest` PlatformImage source
// fails 403 on every watch and build without it.

targetScope = 'subscription'

@description('The kiln app identity (principal id).')
param principalId string

@description('main.bicep\'s uniqueString of its resource group: keeps the role name unique in the tenant.')
param deploymentSuffix string

// One definition per subscription (the GUID is derived from it); a second
// kiln in the same subscription deploys the same definition, unchanged.
resource marketplaceReader 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(subscription().id, 'kiln-marketplace-reader')
  properties: {
    roleName: 'kiln marketplace reader (${subscription().subscriptionId})'
    description: 'List marketplace VM image versions (kiln watches them for base-image updates).'
    type: 'CustomRole'
    assignableScopes: [ subscription().id ]
    permissions: [
      {
        actions: [
          'Microsoft.Compute/locations/publishers/artifacttypes/offers/skus/versions/read'
        ]
      }
    ]
  }
}

resource appReadsMarketplace 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(subscription().id, principalId, marketplaceReader.id, deploymentSuffix)
  properties: {
    roleDefinitionId: marketplaceReader.id
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}
